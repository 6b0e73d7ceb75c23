package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestDevMigrations runs `pgtenant dev --migrations DIR` as README
// "Evolving the schema" does: the tenants get the files' schema, a file
// added while dev is down reaches an existing tenant at the next start,
// and --template-sql on an existing template says it does nothing.
func TestDevMigrations(t *testing.T) {
	pgtest.Shared(t)
	dir := devDir(t)
	migs := filepath.Join(dir, "migrations")
	if err := os.Mkdir(migs, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, sql string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(migs, name), []byte(sql), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("0001_init.sql", "CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);\n")
	write("0002_add_orders.sql", "CREATE TABLE orders (id bigint PRIMARY KEY, customer bigint REFERENCES customers);\n")
	args := []string{"dev", "--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--migrations", migs}

	m, stdout, _, stop := startRunOut(t, psqlLine, args...)
	if !strings.Contains(stdout.String(), "target version 2") {
		t.Errorf("dev does not say what it migrated:\n%s", stdout.String())
	}
	dsn := m[1]
	if got := query(t, dsn, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'pgtenant_migrations'"); got != "customers,orders" {
		t.Fatalf("a new tenant's tables: %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	write("0003_order_status.sql", "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';\n")
	m, stdout, _, stop = startRunOut(t, psqlLine, args...)
	if !strings.Contains(stdout.String(), "target version 3") {
		t.Errorf("dev does not say what it migrated:\n%s", stdout.String())
	}
	if got := query(t, m[1], "SELECT count(*)::text FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'status'"); got != "1" {
		t.Fatalf("the existing tenant lacks 0003's column (%s)", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	schema := filepath.Join(dir, "schema.sql")
	if err := os.WriteFile(schema, []byte("CREATE TABLE notes (body text);"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, stderr, stop := startRunOut(t, psqlLine, "dev", "--data-dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--template-sql", schema)
	_ = stop()
	if !strings.Contains(stderr.String(), "--migrations") {
		t.Errorf("--template-sql on an existing template does not point to --migrations:\n%s", stderr.String())
	}
}
