package router_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/localca"
	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// startTLSPostgres starts a cluster of its own serving TLS (ssl=on) with a
// certificate for 127.0.0.1 and localhost from a fresh local CA, whose
// certificate it writes to a file it returns.
func startTLSPostgres(t *testing.T) (*localproc.Cluster, string) {
	t.Helper()
	c := pgtest.Start(t)
	ca, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := pgtest.NewPool(t, c.AdminDSN("postgres"))
	var dataDir string
	if err := admin.QueryRow(t.Context(), "SHOW data_directory").Scan(&dataDir); err != nil {
		t.Fatal(err)
	}
	// server.crt and server.key are ssl_cert_file's and ssl_key_file's
	// defaults; the key must belong to the OS user postgres runs as.
	crt, key := filepath.Join(dataDir, "server.crt"), filepath.Join(dataDir, "server.key")
	if err := cert.WriteFiles(crt, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	for _, f := range []string{crt, key} {
		if err := os.Chown(f, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Exec(t.Context(), "ALTER SYSTEM SET ssl = on"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(t.Context(), "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "postgres serving TLS", func() bool {
		conn, err := pgx.Connect(t.Context(), strings.Replace(c.AdminDSN("postgres"), "sslmode=disable", "sslmode=require", 1))
		if err != nil {
			return false
		}
		_ = conn.Close(context.Background())
		return true
	})
	return c, caFile
}

// A router whose local provider's server serves TLS encrypts the tenant's
// session to it when upstream.tls is require, and by default when a CA is
// given (verify-full, checked against the route's host); toward this
// loopback server without either it stays plaintext, as in dev.
func TestUpstreamTLSToPostgres(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c, caFile := startTLSPostgres(t)
	otherCA, err := localca.New()
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(otherCAFile, otherCA.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, tls, ca string
		wantSSL       bool
		wantErr       bool
	}{
		{name: "loopback default: plaintext", wantSSL: false},
		{name: "require", tls: proxy.TLSRequire, wantSSL: true},
		{name: "CA given: verify-full by default", ca: caFile, wantSSL: true},
		{name: "verify-full", tls: proxy.TLSVerifyFull, ca: caFile, wantSSL: true},
		{name: "verify-full against another CA", tls: proxy.TLSVerifyFull, ca: otherCAFile, wantErr: true},
	}
	key := catalog.NewKey() // one catalog for the subtests
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := start(t, func(cfg *router.Config) {
				cfg.Catalog.DSN = c.AdminDSN("postgres")
				cfg.Catalog.Key = key
				cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
				cfg.Provider.Local.Prefix = "tls" + string(rune('a'+i)) + "_"
				cfg.Upstream.TLS, cfg.Upstream.CAFile = tt.tls, tt.ca
			})
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			conn, err := pgx.Connect(ctx, "postgres://acme:router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
			if tt.wantErr {
				if err == nil {
					_ = conn.Close(ctx)
					t.Fatal("connected through an upstream whose certificate the CA did not sign")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			var ssl bool
			if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
				t.Fatal(err)
			}
			if ssl != tt.wantSSL {
				t.Fatalf("pg_stat_ssl.ssl = %v for the tenant's upstream session, want %v", ssl, tt.wantSSL)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A router configured for plaintext toward a non-loopback upstream says so
// at start, naming the upstream and no secret; the default (require) and
// a loopback upstream say nothing.
func TestPlaintextUpstreamWarning(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	tests := []struct {
		name, host, tls string
		warn            bool
	}{
		{"explicit disable toward a remote host", "db.example.invalid", proxy.TLSDisable, true},
		{"default toward a remote host (require)", "db.example.invalid", "", false},
		{"explicit disable toward loopback", "127.0.0.1", proxy.TLSDisable, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := router.DefaultConfig()
			cfg.Listen = "127.0.0.1:0"
			cfg.Auth.Password = "router-test-secret"
			cfg.Catalog.Key = catalog.NewKey()
			cfg.Catalog.DSN = c.AdminDSN(pgtest.CreateDB(t, c))
			cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
			cfg.Provider.Local.Host, cfg.Provider.Local.Port = tt.host, 5432
			cfg.Upstream.TLS = tt.tls
			logs := &syncBuffer{}
			r, err := router.New(t.Context(), cfg, router.Options{Log: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			out := logs.String()
			got := strings.Contains(out, "level=WARN") && strings.Contains(out, "upstream TLS is off")
			if got != tt.warn {
				t.Fatalf("warning logged: %v, want %v; log:\n%s", got, tt.warn, out)
			}
			if tt.warn && !strings.Contains(out, "upstream="+tt.host+":5432") {
				t.Fatalf("warning does not name the upstream %s:5432:\n%s", tt.host, out)
			}
			for _, secret := range []string{c.AdminPassword(), cfg.Catalog.Key, cfg.Auth.Password} {
				if strings.Contains(out, secret) {
					t.Fatal("the log holds a secret")
				}
			}
		})
	}
}
