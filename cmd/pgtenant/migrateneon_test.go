package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision/neon/neontest"
	"github.com/pgtenant/pgtenant/router"
)

// TestMigrateNeonFake runs `pgtenant migrate up` on a neon configuration
// against the fake Neon: tenants created through `pgtenant serve`, the
// template branch migrated first, every session of the migration on the
// endpoints' direct hosts (dialled through upstream.dial_override, TLS
// verify-full with SNI), and a tenant created afterwards born current.
func TestMigrateNeonFake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := pgtest.Shared(t)
	be, err := neontest.NewBackendConfig(ctx, neontest.BackendConfig{
		AdminDSN: c.AdminDSN("postgres"), TemplateSQL: "CREATE TABLE items (id int)",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	var fakeLog syncBuf
	fake, err := neontest.NewServer(ctx, neontest.Config{APIKey: "napi_migrate", Backend: be, OpDelay: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&fakeLog, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	proj, err := fake.CreateProject(ctx, "templates")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, fake.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	migDir := filepath.Join(dir, "migrations")
	if err := os.Mkdir(migDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv(router.EnvPassword, "neon-secret")
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(pgtest.CreateDB(t, c)))
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	t.Setenv(router.EnvNeonAPIKey, "napi_migrate")
	cfg := writeFile(t, `listen: 127.0.0.1:0
provider:
  kind: neon
  neon:
    base_url: `+fake.URL()+`
    projects: [{id: `+proj.Project.ID+`}]
upstream:
  tls: verify-full
  ca_file: `+caFile+`
  dial_override: `+fake.PGAddr()+`
migrations:
  dir: `+migDir+`
  canary: 1
`)
	m, _, stop := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	defer func() { _ = stop() }()
	dsn := func(tenant string) string {
		return "postgres://" + tenant + ":neon-secret@" + m[1] + "/app?sslmode=disable"
	}
	for _, tenant := range []string{"acme", "bolt"} {
		query(t, dsn(tenant), "SELECT count(*)::text FROM items") // created from the template branch
	}

	if err := os.WriteFile(filepath.Join(migDir, "0001_price.sql"), []byte("ALTER TABLE items ADD price numeric;"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(migDir, "0002_orders.sql"), []byte("CREATE TABLE orders (id int);"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(fakeLog.String(), "pooler=false")
	var out syncBuf
	if err := run(ctx, []string{"migrate", "up", "--config", cfg}, &out, &out); err != nil {
		t.Fatalf("migrate up: %v\n%s", err, out.String())
	}
	for _, w := range []string{"version 2: 2 of 2 tenants done, 0 failed, 0 not reached; 6 migrations applied",
		"template neon:" + proj.Project.ID + "/default: version 2, ok", "VERSION  TENANTS\n2        2\n"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("migrate up does not say %q:\n%s", w, out.String())
		}
	}
	// The template and both tenants, each on its direct host (a session
	// per database, none through the pooler).
	sessions := regexp.MustCompile(`compute session started.*`).FindAllString(fakeLog.String(), -1)
	var direct int
	for _, s := range sessions {
		if strings.Contains(s, "pooler=false") {
			direct++
		}
	}
	if direct-before != 3 {
		t.Errorf("%d sessions on direct hosts during migrate up, want 3 (template, acme, bolt):\n%s", direct-before, strings.Join(sessions, "\n"))
	}
	for _, tenant := range []string{"acme", "bolt"} {
		if got := query(t, dsn(tenant), "SELECT string_agg(version::text, ',' ORDER BY version) || ' ' || (SELECT count(*) FROM orders) || ' ' || (SELECT count(price) FROM items) FROM pgtenant_migrations"); got != "1,2 0 0" {
			t.Errorf("tenant %s: version table and schema %q", tenant, got)
		}
	}
	// Branched from the migrated template: born at version 2.
	if got := query(t, dsn("late"), "SELECT string_agg(version::text, ',' ORDER BY version) || ' ' || (SELECT count(*) FROM orders) || ' ' || (SELECT count(price) FROM items) FROM pgtenant_migrations"); got != "1,2 0 0" {
		t.Errorf("tenant created after the migration: %q", got)
	}
	out = syncBuf{}
	if err := run(ctx, []string{"migrate", "up", "--config", cfg}, &out, &out); err != nil {
		t.Fatalf("migrate up again: %v\n%s", err, out.String())
	}
	if w := "version 2: 3 of 3 tenants done, 0 failed, 0 not reached; 0 migrations applied"; !strings.Contains(out.String(), w) {
		t.Errorf("second migrate up does not say %q:\n%s", w, out.String())
	}
}
