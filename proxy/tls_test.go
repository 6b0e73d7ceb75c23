package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgtenant/pgtenant/internal/localca"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// testTLS is a CA and the router certificate it issued, in files.
type testTLS struct {
	ca                        *localca.CA
	leaf                      *localca.Cert
	certFile, keyFile, caFile string
}

func newTestTLS(t testing.TB) *testTLS {
	t.Helper()
	ca, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	d := t.TempDir()
	tt := &testTLS{ca: ca, certFile: filepath.Join(d, "server.crt"), keyFile: filepath.Join(d, "server.key"), caFile: filepath.Join(d, "ca.crt")}
	tt.issue(t, ca)
	if err := os.WriteFile(tt.caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return tt
}

// issue writes a certificate for the loopback names from ca to the files.
func (tt *testTLS) issue(t testing.TB, ca *localca.CA) *localca.Cert {
	t.Helper()
	c, err := ca.Issue("localhost", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFiles(tt.certFile, tt.keyFile); err != nil {
		t.Fatal(err)
	}
	tt.leaf = c
	return c
}

func withTLS(mode string, tt *testTLS) routerOpt {
	return func(c *proxy.Config) {
		c.TLS = proxy.TLSConfig{Mode: mode, CertFile: tt.certFile, KeyFile: tt.keyFile}
	}
}

// startTLSFakeRouter runs a router with TLS in front of f (no catalog), and
// returns its address and server.
func startTLSFakeRouter(t *testing.T, f *fakeResolver, opts ...routerOpt) (string, *proxy.Server, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := proxy.Config{
		Auth: proxy.Auth{Password: appSecret}, ConnectTimeout: 20 * time.Second,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := proxy.New(cfg, f)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("router log:\n%s", logs.String())
		}
	})
	return ln.Addr().String(), srv, logs
}

var sslRequest = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)

// tlsDial opens a TLS connection to the router, after an SSLRequest unless
// direct, and completes the handshake.
func tlsDial(t *testing.T, addr string, direct bool, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c := rawConn(t, addr)
	if !direct {
		if _, err := c.Write(sslRequest); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answered %q, %v; want 'S'", b[0], err)
		}
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = tc.Close() })
	return tc, nil
}

// peerCert is the certificate the router presents in a new handshake.
func peerCert(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	tc, err := tlsDial(t, addr, false, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test inspects the certificate itself
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	return tc.ConnectionState().PeerCertificates[0]
}

func connectTLS(t *testing.T, dsn string, edit func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(cfg)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("connection is %T, want TLS", conn.PgConn().Conn())
	}
	return conn
}

func waitForLog(t *testing.T, logs *syncBuffer, want string) {
	t.Helper()
	poll.Until(t, 10*time.Second, fmt.Sprintf("%q in the router log", want), func() bool { return strings.Contains(logs.String(), want) })
}

// TestTLSClients connects real clients over TLS to a router in mode allow.
func TestTLSClients(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	r := startRouter(t, newCatalogDB(t), withTLS(proxy.TLSModeAllow, tt))
	tenant := newTenant("tls")
	base := "postgres://" + tenant + ":" + appSecret + "@" + r.addr + "/app?"
	db := "t_" + tenant

	t.Run("pgx verify-full with channel binding", func(t *testing.T) {
		conn := connectTLS(t, base+"sslmode=verify-full&channel_binding=require&sslrootcert="+tt.caFile, func(c *pgx.ConnConfig) {
			c.TLSConfig.ServerName = "localhost" // also the SNI
		})
		if got := queryString(t, conn, "SELECT current_database()"); got != db {
			t.Fatalf("current_database = %q", got)
		}
		conn.Close(context.Background())
		waitForLog(t, r.logs, "sni=localhost")
	})
	t.Run("pgx sslmode=require", func(t *testing.T) {
		conn := connectTLS(t, base+"sslmode=require", nil)
		if got := queryString(t, conn, "SELECT current_database()"); got != db {
			t.Fatalf("current_database = %q", got)
		}
	})
	t.Run("pgx direct TLS", func(t *testing.T) {
		conn := connectTLS(t, base+"sslmode=verify-full&sslnegotiation=direct&sslrootcert="+tt.caFile, nil)
		if got := queryString(t, conn, "SELECT current_database()"); got != db {
			t.Fatalf("current_database = %q", got)
		}
	})
	t.Run("direct TLS without ALPN postgresql is refused", func(t *testing.T) {
		for _, protos := range [][]string{nil, {"h2"}} {
			_, err := tlsDial(t, r.addr, true, &tls.Config{RootCAs: tt.ca.Pool(), ServerName: "localhost", NextProtos: protos})
			if err == nil || !strings.Contains(err.Error(), "remote error") {
				t.Fatalf("ALPN %q: handshake %v, want a TLS alert", protos, err)
			}
		}
		// The ALPN is also checked after an SSLRequest, when offered.
		if _, err := tlsDial(t, r.addr, false, &tls.Config{RootCAs: tt.ca.Pool(), ServerName: "localhost", NextProtos: []string{"h2"}}); err == nil {
			t.Fatal("ALPN h2 after SSLRequest accepted")
		}
	})
	t.Run("cancel over TLS", func(t *testing.T) {
		conn := connectTLS(t, base+"sslmode=require", nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
			done <- err
		}()
		for { // the first cancel may arrive before the query started
			if err := conn.PgConn().CancelRequest(ctx); err != nil { // over TLS, as the session is
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if pgCode(err) != "57014" {
					t.Fatalf("cancelled query: %v, want 57014", err)
				}
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	t.Run("psql", func(t *testing.T) {
		psql := psqlPath(t)
		port := r.addr[strings.LastIndexByte(r.addr, ':')+1:]
		for _, conninfo := range []string{
			// host names the certificate (and the SNI); hostaddr is where to dial.
			"host=localhost hostaddr=127.0.0.1 sslmode=verify-full channel_binding=require sslrootcert=" + tt.caFile,
			"host=127.0.0.1 sslmode=disable",
		} {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
				conninfo+" port="+port+" user="+tenant+" dbname=app", "-c", "SELECT current_database()")
			cmd.Env = append(os.Environ(), "PGPASSWORD="+appSecret, "PGCONNECT_TIMEOUT=30")
			out, err := cmd.CombinedOutput()
			cancel()
			if got := strings.TrimSpace(string(out)); err != nil || got != db {
				t.Fatalf("psql %q: %q, %v", conninfo, got, err)
			}
		}
	})
	r.stop()
	r.assertNoSecrets(t, string(tt.leaf.KeyPEM))
}

func TestTLSRequired(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	addr, _, _ := startTLSFakeRouter(t, &fakeResolver{routes: []resolver.Route{adminRoute(t, pgtest.Shared(t).AdminPassword())}},
		withTLS(proxy.TLSModeRequired, tt))
	base := "postgres://acme:" + appSecret + "@" + addr + "/app?"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := pgx.Connect(ctx, base+"sslmode=disable")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "TLS is required") ||
		!strings.Contains(pgErr.Hint, "sslmode=require") {
		t.Fatalf("plaintext session: %v, want 28000 saying TLS is required", err)
	}
	conn := connectTLS(t, base+"sslmode=require", nil)
	if got := queryString(t, conn, "SELECT 'over TLS'"); got != "over TLS" {
		t.Fatal(got)
	}
	// A plaintext cancel request is still taken (and, unknown, ignored).
	c := rawConn(t, addr)
	if _, err := c.Write(cancelPacket(1, 2)); err != nil {
		t.Fatal(err)
	}
	if b, err := readAll(c); err != nil || len(b) != 0 {
		t.Fatalf("plaintext cancel answered %q, %v; want a silent close", b, err)
	}
}

// TestTLSReload replaces the certificate under a running router: by
// ReloadTLS and by changing the files, with a session kept open throughout.
func TestTLSReload(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	addr, srv, logs := startTLSFakeRouter(t, &fakeResolver{routes: []resolver.Route{adminRoute(t, pgtest.Shared(t).AdminPassword())}},
		withTLS(proxy.TLSModeAllow, tt))
	first := tt.leaf.TLS.Leaf
	if got := peerCert(t, addr); !got.Equal(first) {
		t.Fatalf("router presents %s, want the configured certificate", got.Subject)
	}
	session := connectTLS(t, "postgres://acme:"+appSecret+"@"+addr+"/app?sslmode=require", nil)
	stillWorks := func() {
		t.Helper()
		if got := queryString(t, session, "SELECT 'still here'"); got != "still here" {
			t.Fatal(got)
		}
	}

	// ReloadTLS: a certificate of another CA.
	ca2, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	second := tt.issue(t, ca2).TLS.Leaf
	if err := srv.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if got := peerCert(t, addr); !got.Equal(second) {
		t.Fatalf("after ReloadTLS the router presents serial %s, want %s", got.SerialNumber, second.SerialNumber)
	}
	if _, err := tlsDial(t, addr, false, &tls.Config{RootCAs: ca2.Pool(), ServerName: "localhost"}); err != nil {
		t.Fatalf("verify against the new CA: %v", err)
	}
	stillWorks()

	// A bad file: ReloadTLS fails, naming it, and the certificate stays.
	if err := os.WriteFile(tt.certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.ReloadTLS(); err == nil || !strings.Contains(err.Error(), tt.certFile) {
		t.Fatalf("ReloadTLS of a broken file: %v, want an error naming %s", err, tt.certFile)
	}
	if got := peerCert(t, addr); !got.Equal(second) {
		t.Fatal("a failed reload replaced the certificate")
	}
	stillWorks()

	// Changed files are picked up without ReloadTLS (checked once a second).
	ca3, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	third := tt.issue(t, ca3).TLS.Leaf
	poll.Until(t, 10*time.Second, "the router to pick up the changed certificate files", func() bool { return peerCert(t, addr).Equal(third) })
	waitForLog(t, logs, "TLS certificate reloaded")

	// A broken change is logged and the certificate kept.
	if err := os.WriteFile(tt.keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "a warning about the broken key file", func() bool {
		if !peerCert(t, addr).Equal(third) {
			t.Fatal("a broken key file replaced the certificate")
		}
		return strings.Contains(logs.String(), "cannot be used")
	})
	stillWorks()
}

// TestSCRAMChannelBindingRules drives the SASL exchange by hand: the
// -PLUS offer over TLS, and the RFC 5802 rules on the client's GS2 flag.
func TestSCRAMChannelBindingRules(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	addr, _, _ := startTLSFakeRouter(t, &fakeResolver{err: errors.New("not reached")}, withTLS(proxy.TLSModeAllow, tt))

	// start opens a session up to the SASL offer, over TLS or not.
	start := func(t *testing.T, overTLS bool) (*pgproto3.Frontend, []string) {
		var c net.Conn = rawConn(t, addr)
		if overTLS {
			tc, err := tlsDial(t, addr, false, &tls.Config{RootCAs: tt.ca.Pool(), ServerName: "localhost"})
			if err != nil {
				t.Fatal(err)
			}
			c = tc
		}
		fe := pgproto3.NewFrontend(c, c)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "acme"}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		sasl, ok := msg.(*pgproto3.AuthenticationSASL)
		if !ok {
			t.Fatalf("got %T, want AuthenticationSASL", msg)
		}
		return fe, sasl.AuthMechanisms
	}
	send := func(t *testing.T, fe *pgproto3.Frontend, m pgproto3.FrontendMessage) pgproto3.BackendMessage {
		fe.Send(m)
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	wantError := func(t *testing.T, msg pgproto3.BackendMessage, code, text string) {
		t.Helper()
		e, ok := msg.(*pgproto3.ErrorResponse)
		if !ok || e.Code != code || !strings.Contains(e.Message, text) {
			t.Fatalf("got %#v, want %s %q", msg, code, text)
		}
	}

	t.Run("offer", func(t *testing.T) {
		if _, mechs := start(t, true); strings.Join(mechs, ",") != "SCRAM-SHA-256-PLUS,SCRAM-SHA-256" {
			t.Fatalf("over TLS the router offers %q", mechs)
		}
		if _, mechs := start(t, false); strings.Join(mechs, ",") != "SCRAM-SHA-256" {
			t.Fatalf("over plaintext the router offers %q", mechs)
		}
	})
	t.Run("y while -PLUS was offered is a downgrade", func(t *testing.T) {
		fe, _ := start(t, true)
		msg := send(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("y,,n=,r=abcdefgh")})
		wantError(t, msg, "08P01", "channel binding negotiation error")
	})
	t.Run("y over plaintext is fine", func(t *testing.T) {
		fe, _ := start(t, false)
		msg := send(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("y,,n=,r=abcdefgh")})
		if _, ok := msg.(*pgproto3.AuthenticationSASLContinue); !ok {
			t.Fatalf("got %#v, want AuthenticationSASLContinue", msg)
		}
	})
	t.Run("-PLUS without binding data", func(t *testing.T) {
		fe, _ := start(t, true)
		msg := send(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("n,,n=,r=abcdefgh")})
		wantError(t, msg, "08P01", "malformed SCRAM message")
	})
	t.Run("-PLUS over plaintext", func(t *testing.T) {
		fe, _ := start(t, false)
		msg := send(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abcdefgh")})
		wantError(t, msg, "08P01", "invalid SASL authentication mechanism")
	})
	t.Run("binding to another certificate", func(t *testing.T) {
		fe, _ := start(t, true)
		cl, err := scram.SHA256.NewClient("", appSecret, "")
		if err != nil {
			t.Fatal(err)
		}
		conv := cl.NewConversationWithChannelBinding(scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: make([]byte, 32)})
		first, err := conv.Step("")
		if err != nil {
			t.Fatal(err)
		}
		msg := send(t, fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte(first)})
		cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
		if !ok {
			t.Fatalf("got %#v", msg)
		}
		final, err := conv.Step(string(cont.Data))
		if err != nil {
			t.Fatal(err)
		}
		msg = send(t, fe, &pgproto3.SASLResponse{Data: []byte(final)})
		wantError(t, msg, "28P01", "channel binding check failed")
	})
}

func TestTLSConfigErrors(t *testing.T) {
	tt := newTestTLS(t)
	missing := filepath.Join(t.TempDir(), "nope.crt")
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  proxy.TLSConfig
		want string // in the error; "" means no error
	}{
		{"zero value is disabled", proxy.TLSConfig{}, ""},
		{"disable needs no files", proxy.TLSConfig{Mode: proxy.TLSModeDisable}, ""},
		{"allow", proxy.TLSConfig{Mode: proxy.TLSModeAllow, CertFile: tt.certFile, KeyFile: tt.keyFile}, ""},
		{"unknown mode", proxy.TLSConfig{Mode: "require", CertFile: tt.certFile, KeyFile: tt.keyFile}, `"require"`},
		{"no files", proxy.TLSConfig{Mode: proxy.TLSModeRequired}, "certificate file"},
		{"missing certificate", proxy.TLSConfig{Mode: proxy.TLSModeAllow, CertFile: missing, KeyFile: tt.keyFile}, missing},
		{"bad certificate", proxy.TLSConfig{Mode: proxy.TLSModeAllow, CertFile: garbage, KeyFile: tt.keyFile}, garbage},
		{"key of another certificate", proxy.TLSConfig{Mode: proxy.TLSModeAllow, CertFile: tt.certFile, KeyFile: func() string {
			other := newTestTLS(t)
			return other.keyFile
		}()}, "does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := proxy.New(proxy.Config{Auth: proxy.Auth{Password: appSecret}, TLS: tc.cfg}, &fakeResolver{})
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %s", err, tc.want)
			}
		})
	}
}

// TestTLSDisabled: the default answers SSLRequest with 'N' and does not
// look for direct TLS.
func TestTLSDisabled(t *testing.T) {
	pgtest.CheckGoroutines(t)
	addr, _, _ := startTLSFakeRouter(t, &fakeResolver{err: errors.New("not reached")})
	c := rawConn(t, addr)
	if _, err := c.Write(sslRequest); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("SSLRequest answered %q, %v; want 'N'", b[0], err)
	}
}
