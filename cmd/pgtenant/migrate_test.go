package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// TestMigrateCommand runs `pgtenant migrate status|up` on tenants made as
// `pgtenant serve` makes them, configured as serve is: its output and exit
// status.
func TestMigrateCommand(t *testing.T) {
	c := pgtest.Shared(t)
	catDSN := c.AdminDSN(pgtest.CreateDB(t, c))
	key := catalog.NewKey()
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, catDSN)
	t.Setenv(router.EnvCatalogKey, key)
	dir := t.TempDir()
	cfgFile := writeFile(t, "provider:\n  local:\n    prefix: mig_\n    template: mig_template\nmigrations:\n  dir: "+dir+"\n  canary: 0\n")
	ctx := t.Context()

	// Two tenants, created as serve creates them.
	k, _ := catalog.ParseKey(key)
	cat, err := catalog.Open(ctx, pgtest.NewPool(t, catDSN), k)
	if err != nil {
		t.Fatal(err)
	}
	p := local.New(local.Config{Template: "mig_template", Prefix: "mig_"}, pgtest.NewPool(t, c.AdminDSN("postgres")))
	if _, err := p.EnsureTemplate(ctx, "CREATE TABLE items (id int)"); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"acme", "bolt"} {
		if _, _, err := cat.Ensure(ctx, tenant, "local", func(ctx context.Context) (provision.Endpoint, error) { return p.Create(ctx, tenant) }); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, sql string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	migrateCmd := func(args ...string) (string, error) {
		var out, errOut syncBuf
		err := run(context.Background(), append([]string{"migrate"}, append(args, "--config", cfgFile)...), &out, &errOut)
		if strings.Contains(out.String(), "\r") {
			t.Errorf("a progress bar on a stdout that is no terminal:\n%q", out.String())
		}
		return out.String() + errOut.String(), err
	}
	expect := func(code int, wants []string, args ...string) string {
		t.Helper()
		out, err := migrateCmd(args...)
		if exitCode(err) != code {
			t.Fatalf("migrate %s: exit %d (%v), want %d\n%s", strings.Join(args, " "), exitCode(err), err, code, out)
		}
		if err != nil {
			out += "\nerror: " + err.Error()
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("migrate %s does not say %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
		return out
	}
	versionTables := func() string {
		var parts []string
		for _, db := range []string{"mig_template", "mig_acme", "mig_bolt"} {
			parts = append(parts, query(t, c.AdminDSN(db), "SELECT coalesce((SELECT string_agg(version::text, ',' ORDER BY version) FROM pgtenant_migrations), '-')"))
		}
		return strings.Join(parts, " ")
	}

	expect(0, []string{"target version 0 (none registered); 2 tenants", "not yet seen  2"}, "status", "--dir", "")
	write("0001_price.sql", "ALTER TABLE items ADD price numeric;")
	write("0002_orders.sql", "CREATE TABLE orders (id int);")
	expect(0, []string{"2 migration files not registered yet"}, "status")
	expect(0, []string{"dry run: 6 migrations to apply to reach version 2", "nothing was changed"}, "up", "--dry-run")
	if reg, _ := cat.Migrations(ctx); len(reg) != 0 {
		t.Fatalf("dry run registered %v", reg)
	}
	expect(0, []string{"version 1: 1 of 1 tenants done, 0 failed, 0 not reached; 1 migrations applied"}, "up", "--to", "1", "--tenants", "bolt")
	expect(1, []string{"target version 2 (0002_orders.sql); 2 tenants", "1             1", "not yet seen  1", "2 of 2 tenants are not recorded at version 2"}, "status")
	expect(0, []string{"version 2: 2 of 2 tenants done, 0 failed, 0 not reached; 5 migrations applied", "template mig_template: version 2, ok", "VERSION  TENANTS\n2        2\n"}, "up")
	if got := versionTables(); got != "1,2 1,2 1,2" {
		t.Fatalf("version tables %s", got)
	}
	expect(0, []string{"VERSION  TENANTS\n2        2\n"}, "status")

	// A failing migration: exit 1, the error in both tables.
	write("0003_bad.sql", "SELECT 1/0;")
	expect(1, []string{"stopped: the template failed", "template mig_template  2", "division by zero", "run migrate up again"}, "up")
	expect(1, []string{"template mig_template: version 2, failed: 0003_bad.sql: ERROR: division by zero"}, "status")
	// Edited after it was applied: refused before anything runs.
	if err := os.Remove(filepath.Join(dir, "0003_bad.sql")); err != nil {
		t.Fatal(err)
	}
	write("0002_orders.sql", "CREATE TABLE orders (id bigint);")
	expect(2, []string{"0002_orders.sql", "was edited"}, "status")
	out, err := migrateCmd("up")
	var ce *catalog.ChecksumError
	if !errors.As(err, &ce) || exitCode(err) != 2 {
		t.Fatalf("up with an edited file: %v\n%s", err, out)
	}
	if got := versionTables(); got != "1,2 1,2 1,2" {
		t.Fatalf("version tables %s", got)
	}

	// Usage and configuration errors: exit 2.
	for _, args := range [][]string{{}, {"sideways"}, {"up", "extra"}, {"up", "--concurrency", "0"}, {"up", "--max-fail-share", "2"}, {"up", "--dir", filepath.Join(dir, "nope")}} {
		var out syncBuf
		err := run(context.Background(), append([]string{"migrate"}, append(args, "--config", cfgFile)...), &out, &out)
		if len(args) == 0 {
			err = run(context.Background(), []string{"migrate"}, &out, &out)
		}
		if exitCode(err) != 2 {
			t.Errorf("migrate %q: exit %d (%v)\n%s", args, exitCode(err), err, out.String())
		}
	}
}
