package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// withStdin runs f with os.Stdin reading input (a pipe: no terminal).
func withStdin(t *testing.T, input string, f func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.WriteString(input); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = old }()
	f()
}

func findPsql(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(m) > 0 {
		return m[len(m)-1]
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("psql not found (CI must not skip): install postgresql-client")
	}
	t.Skip("psql not found")
	return ""
}

// TestTenantsPasswd runs `pgtenant serve` with auth.per_tenant and sets a
// tenant's own secret with `pgtenant tenants passwd`: from standard input
// into the catalog directly (the router picks it up within
// auth.per_tenant_refresh), then as a verifier through the admin API (at
// once), then deletes it; psql logs in with it to its tenant only.
func TestTenantsPasswd(t *testing.T) {
	psql := findPsql(t)
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	t.Setenv(router.EnvPassword, "serve-secret")
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(db))
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	t.Setenv(router.EnvAdminToken, testAdminToken)
	cfg := writeFile(t, "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nauth:\n  per_tenant: true\n  per_tenant_refresh: 100ms\n"+
		"provider:\n  local:\n    prefix: pw_\n")
	m, stderr, _ := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	addr := m[1]
	am := regexp.MustCompile(`msg="admin listening" addr=(\S+)`).FindStringSubmatch(stderr.String())
	if am == nil {
		t.Fatalf("no admin listening line:\n%s", stderr.String())
	}
	api := "http://" + am[1]
	dsn := func(tenant, pw string) string {
		return "postgres://" + tenant + ":" + pw + "@" + addr + "/app?sslmode=disable"
	}
	connect := func(tenant, pw string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn(tenant, pw))
		if err == nil {
			_ = conn.Close(ctx)
		}
		return err
	}
	tenants := func(args ...string) (string, error) {
		var out strings.Builder
		err := run(context.Background(), append([]string{"tenants"}, args...), &out, io.Discard)
		return out.String(), err
	}
	psqlAs := func(tenant, pw string) (string, error) {
		cmd := exec.Command(psql, "-X", "-A", "-t", "-c", "SELECT current_database()", "postgres://"+tenant+"@"+addr+"/app?sslmode=disable")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pw)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	for _, tenant := range []string{"acme", "beta"} {
		query(t, dsn(tenant, "serve-secret"), "SELECT 1::text")
	}

	// From standard input, into the catalog: the router follows.
	var out string
	var err error
	withStdin(t, "cli-s3cret\n", func() { out, err = tenants("passwd", "acme", "--password-stdin", "--config", cfg) })
	if err != nil || !strings.Contains(out, "own secret set") {
		t.Fatalf("passwd --password-stdin: %v\n%s", err, out)
	}
	waitFor(t, "the router to take acme's new secret", func() bool { return connect("acme", "cli-s3cret") == nil })
	if got, err := psqlAs("acme", "cli-s3cret"); err != nil || got != "pw_acme" {
		t.Fatalf("psql as acme with its own secret: %q, %v", got, err)
	}
	if got, err := psqlAs("beta", "cli-s3cret"); err == nil || !strings.Contains(got, `password authentication failed for user "beta"`) {
		t.Fatalf("psql as beta with acme's secret: %q, %v; want a failed password", got, err)
	}
	if err := connect("acme", "serve-secret"); err != nil {
		t.Fatalf("app secret on acme (tenant_secret besides): %v", err)
	}

	// A verifier, through the admin API: at once.
	v, err := proxy.NewTenantVerifier("api-s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := tenants("passwd", "acme", "--verifier", v, "--admin", api); err != nil || !strings.Contains(out, "own secret set") {
		t.Fatalf("passwd --verifier --admin: %v\n%s", err, out)
	}
	if err := connect("acme", "api-s3cret"); err != nil {
		t.Fatalf("the secret set through the admin API: %v", err)
	}
	if err := connect("acme", "cli-s3cret"); sqlState(err) != "28P01" {
		t.Fatalf("the replaced secret: %v, want 28P01", err)
	}
	if out, err := tenants("passwd", "acme", "--delete", "--admin", api); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("passwd --delete: %v\n%s", err, out)
	}
	if err := connect("acme", "api-s3cret"); sqlState(err) != "28P01" {
		t.Fatalf("the deleted secret: %v, want 28P01", err)
	}

	// Usage errors.
	withStdin(t, "x\n", func() { _, err = tenants("passwd", "acme", "--config", cfg) })
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--password-stdin") {
		t.Errorf("passwd without a terminal: %v, want a usage error naming --password-stdin", err)
	}
	if _, err := tenants("passwd", "acme", "--delete", "--password-stdin", "--config", cfg); !errors.Is(err, errUsage) {
		t.Errorf("passwd --delete --password-stdin: %v, want a usage error", err)
	}
	if _, err := tenants("passwd", "acme", "--verifier", "SCRAM-SHA-256$1:x", "--config", cfg); err == nil || strings.Contains(err.Error(), "$1:x") {
		t.Errorf("passwd with a bad verifier: %v, want an error that does not echo it", err)
	}
	for _, s := range []string{"cli-s3cret", "api-s3cret"} {
		if strings.Contains(stderr.String(), s) {
			t.Errorf("the router's log holds a password (%s...)", s[:4])
		}
	}
}
