package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func cancelPacket(pid, secret uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, 16)
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pid)
	return binary.BigEndian.AppendUint32(b, secret)
}

// readAll reads until the router closes the connection.
func readAll(c net.Conn) ([]byte, error) { return io.ReadAll(c) }

// readError expects the router's whole answer to be one ErrorResponse
// followed by a close.
func readError(t *testing.T, c net.Conn) *pgproto3.ErrorResponse {
	t.Helper()
	b, err := readAll(c)
	if err != nil {
		t.Fatalf("reading the router's answer: %v", err)
	}
	if len(b) < 5 || b[0] != 'E' {
		t.Fatalf("router answered %q, want an ErrorResponse", b)
	}
	n := int(binary.BigEndian.Uint32(b[1:5]))
	if len(b) != 1+n {
		t.Fatalf("router sent %d bytes after its ErrorResponse", len(b)-1-n)
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(b[5:]); err != nil {
		t.Fatal(err)
	}
	return &e
}

func TestProtocolViolations(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.HandshakeTimeout = 300 * time.Millisecond })

	startup := func(major, minor uint16, kv ...string) []byte {
		body := binary.BigEndian.AppendUint32(nil, uint32(major)<<16|uint32(minor))
		for _, s := range kv {
			body = append(append(body, s...), 0)
		}
		body = append(body, 0)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
	}
	tests := []struct {
		name     string
		send     []byte
		wantCode string // "" means: closed without an answer
	}{
		{"http request", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01"},
		{"1 GB length prefix", []byte{0x40, 0, 0, 0, 0, 3, 0, 0}, "08P01"},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xf0}, "08P01"},
		{"protocol 2", startup(2, 0, "user", "acme"), "0A000"},
		{"no user", startup(3, 0, "database", "app"), "28000"},
		{"replication", startup(3, 0, "user", "acme", "replication", "database"), "0A000"},
		{"bad layout", append(binary.BigEndian.AppendUint32(nil, 12), 0, 3, 0, 0, 'u', 's', 'e', 'r'), "08P01"},
		{"slow client: nothing sent", nil, "08P01"},
		{"truncated packet", []byte{0, 0, 0, 100, 0, 3, 0, 0, 'u'}, "08P01"}, // then silence: the deadline ends it
		// One write, so one read takes both: what should wait for an answer came with the packet.
		{"startup pipelined after SSLRequest", append([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, startup(3, 0, "user", "acme")...), "08P01"},
		{"query pipelined after startup", append(startup(3, 0, "user", "acme"), 'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0), "08P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rawConn(t, r.addr)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			e := readError(t, c)
			if e.Code != tt.wantCode {
				t.Fatalf("code %s (%s), want %s", e.Code, e.Message, tt.wantCode)
			}
		})
	}

	t.Run("truncated then closed", func(t *testing.T) {
		c := rawConn(t, r.addr)
		_, _ = c.Write([]byte{0, 0, 0, 100, 0, 3})
		_ = c.(*net.TCPConn).CloseWrite()
		if b, err := readAll(c); err != nil || len(b) != 0 {
			t.Fatalf("got %q, %v; want a plain close", b, err)
		}
	})

	t.Run("slow client during authentication", func(t *testing.T) {
		c := rawConn(t, r.addr)
		_, _ = c.Write(startup(3, 0, "user", "acme"))
		// Read AuthenticationSASL, then go silent.
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != 'R' {
			t.Fatalf("%q %v", b, err)
		}
		rest := make([]byte, binary.BigEndian.Uint32(b[1:])-4)
		if _, err := io.ReadFull(c, rest); err != nil {
			t.Fatal(err)
		}
		if e := readError(t, c); e.Code != "08P01" {
			t.Fatalf("code %s", e.Code)
		}
	})

	t.Run("SSLRequest twice", func(t *testing.T) {
		c := rawConn(t, r.addr)
		ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
		_, _ = c.Write(ssl)
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != 'N' {
			t.Fatalf("%q %v", b, err)
		}
		_, _ = c.Write(ssl)
		if e := readError(t, c); e.Code != "08P01" {
			t.Fatalf("code %s", e.Code)
		}
	})
	if n := r.prov.creates.Load(); n != 0 {
		t.Fatalf("Create called %d times", n)
	}
}

// psqlPath finds the psql binary; tests using it skip when it is missing,
// except in CI.
func psqlPath(t *testing.T) string {
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(m) > 0 {
		return m[len(m)-1]
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("psql not found (CI must not skip): install postgresql-client")
	}
	t.Skip("psql not found; install postgresql-client")
	return ""
}

func TestPsql(t *testing.T) {
	pgtest.CheckGoroutines(t)
	psql := psqlPath(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("psql")

	run := func(password string, sql string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
			"postgres://"+tenant+"@"+r.addr+"/app?sslmode=prefer", "-c", sql)
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=30")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := run(appSecret, "SELECT current_database()")
	if err != nil || out != "t_"+tenant {
		t.Fatalf("psql: %q, %v", out, err)
	}
	out, err = run("nope", "SELECT 1")
	if err == nil || !strings.Contains(out, "password authentication failed") {
		t.Fatalf("psql with a wrong password: %q, %v", out, err)
	}
}

// fakeResolver hands out scripted routes and counts calls.
type fakeResolver struct {
	mu          sync.Mutex
	routes      []resolver.Route // the i-th Resolve gets routes[min(i, len-1)]
	err         error
	resolves    int
	invalidated int
}

func (f *fakeResolver) Resolve(_ context.Context, _ string) (resolver.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resolves++
	if f.err != nil {
		return resolver.Route{}, f.err
	}
	return f.routes[min(f.resolves-1, len(f.routes)-1)], nil
}

func (f *fakeResolver) Invalidate(string) {
	f.mu.Lock()
	f.invalidated++
	f.mu.Unlock()
}

func startFakeRouter(t *testing.T, f *fakeResolver) string {
	t.Helper()
	srv, err := proxy.New(proxy.Config{Auth: proxy.Auth{Password: appSecret}, ConnectTimeout: 20 * time.Second,
		Log: slog.New(slog.DiscardHandler)}, f)
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
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func adminRoute(t *testing.T, password string) resolver.Route {
	c := pgtest.Shared(t)
	return resolver.Route{Endpoint: provision.Endpoint{
		Host: c.Host(), Port: c.Port(), Database: "postgres", User: c.AdminUser(), Password: password,
	}, Via: resolver.ViaCatalog}
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) (string, uint16) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr)
	ln.Close()
	return "127.0.0.1", uint16(a.Port)
}

func TestUpstreamFailures(t *testing.T) {
	pgtest.CheckGoroutines(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func(addr string) error {
		c, err := pgx.Connect(ctx, "postgres://acme:"+appSecret+"@"+addr+"/app?sslmode=disable")
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	good := adminRoute(t, pgtest.Shared(t).AdminPassword())

	t.Run("unreachable upstream is re-resolved once, then 08006", func(t *testing.T) {
		host, port := closedPort(t)
		bad := good
		bad.Host, bad.Port = host, port
		f := &fakeResolver{routes: []resolver.Route{bad}}
		err := connect(startFakeRouter(t, f))
		if pgCode(err) != "08006" {
			t.Fatalf("%v, want 08006", err)
		}
		if f.resolves != 2 || f.invalidated != 1 {
			t.Fatalf("resolves %d, invalidations %d; want 2, 1", f.resolves, f.invalidated)
		}
	})
	t.Run("stale password is healed by re-resolving", func(t *testing.T) {
		stale := adminRoute(t, "stale-password")
		f := &fakeResolver{routes: []resolver.Route{stale, good}}
		if err := connect(startFakeRouter(t, f)); err != nil {
			t.Fatal(err)
		}
		if f.invalidated != 1 {
			t.Fatalf("invalidations %d, want 1", f.invalidated)
		}
	})
	t.Run("upstream keeps refusing the login: 08001, password not leaked", func(t *testing.T) {
		f := &fakeResolver{routes: []resolver.Route{adminRoute(t, "stale-password")}}
		err := connect(startFakeRouter(t, f))
		if pgCode(err) != "08001" || strings.Contains(err.Error(), "stale-password") {
			t.Fatalf("%v, want 08001 without the password", err)
		}
	})
	t.Run("provisioning failure: 57P03", func(t *testing.T) {
		f := &fakeResolver{err: fmt.Errorf("create: %w", errors.Join(resolver.ErrProvision, errors.New("boom")))}
		err := connect(startFakeRouter(t, f))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57P03" || strings.Contains(pgErr.Message, "boom") {
			t.Fatalf("%v, want 57P03 without internal detail", err)
		}
	})
	t.Run("provisioning too slow: 57P03", func(t *testing.T) {
		f := &fakeResolver{err: context.DeadlineExceeded}
		if err := connect(startFakeRouter(t, f)); pgCode(err) != "57P03" {
			t.Fatalf("%v, want 57P03", err)
		}
	})
}

func TestTrustNeedsLoopback(t *testing.T) {
	srv, err := proxy.New(proxy.Config{Auth: proxy.Auth{Method: proxy.AuthTrust}}, &fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Serve(context.Background(), fakeListener{addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 6432}})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("trust on a non-loopback listener: %v", err)
	}
}

type fakeListener struct{ addr net.Addr }

func (l fakeListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (l fakeListener) Close() error              { return nil }
func (l fakeListener) Addr() net.Addr            { return l.addr }

// TestRefusedAfterAuthHearsNoAuthOk: a client refused after it
// authenticated (here a blocked tenant, under trust) gets the ErrorResponse
// alone, as a client with a wrong password does: AuthenticationOk comes only
// with the greeting, so whether a refusal came before or after the
// authentication is not told by the stream.
func TestRefusedAfterAuthHearsNoAuthOk(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.Auth = proxy.Auth{Method: proxy.AuthTrust} })
	tenant := newTenant("noauthok")
	r.srv.SetBlocked([]string{tenant})
	c := rawConn(t, r.addr)
	body := binary.BigEndian.AppendUint32(nil, 3<<16)
	for _, s := range []string{"user", tenant, "database", "app"} {
		body = append(append(body, s...), 0)
	}
	body = append(body, 0)
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)); err != nil {
		t.Fatal(err)
	}
	if e := readError(t, c); e.Code != "28000" { // readError: an ErrorResponse and nothing else
		t.Fatalf("code %s (%s), want 28000", e.Code, e.Message)
	}
	// Admitted, the same client hears AuthenticationOk first, in the greeting.
	r.srv.SetBlocked(nil)
	conn, err := pgconn.Connect(t.Context(), r.dsn(tenant, ""))
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(t.Context())
}
