package router_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/router"
)

const catchupMetric = "pgtenant_migrate_catchups_total"

// writeMigrations writes files (name -> SQL) into a new directory.
func writeMigrations(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, sql := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var (
	mig1 = map[string]string{"0001_init.sql": "CREATE TABLE items (id int); CREATE TABLE side_effect (n int);"}
	mig2 = map[string]string{
		"0001_init.sql":     mig1["0001_init.sql"],
		"0002_add_note.sql": "ALTER TABLE items ADD COLUMN note text; INSERT INTO side_effect VALUES (1);",
	}
)

// behindTenant makes tenant (through r, which creates it) at version 1 and
// registers version 2 without migrating anyone, so tenant is behind the
// fleet. It returns the directory holding both files.
func behindTenant(t *testing.T, r *router.Router, tenant string) string {
	t.Helper()
	ctx := context.Background()
	if err := connect(r, tenant); err != nil {
		t.Fatal(err)
	}
	files1, err := migrate.Load(writeMigrations(t, mig1))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := migrate.New(migrate.Config{Catalog: r.Catalog(), Files: files1}).Up(ctx, migrate.UpOptions{Tenants: []string{tenant}})
	if err != nil || !rep.OK() {
		t.Fatalf("up to 1: %+v, %v", rep, err)
	}
	dir := writeMigrations(t, mig2)
	files2, err := migrate.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var reg []catalog.Migration
	for _, f := range files2 {
		reg = append(reg, catalog.Migration{Version: f.Version, File: f.File, Checksum: f.Checksum})
	}
	if err := r.Catalog().RegisterMigrations(ctx, reg); err != nil {
		t.Fatal(err)
	}
	return dir
}

// session connects to tenant through r and runs sql.
func session(r *router.Router, tenant, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// count runs a count(*) query in tenant's database through r.
func count(t *testing.T, r *router.Router, tenant, sql string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

const newSchema = "SELECT note FROM items LIMIT 0" // fails before 0002

// With on_connect migrate, 50 clients connecting at once to a tenant behind
// the fleet all get the new schema, and the migration runs once; later
// connects of the now current tenant are answered from memory.
func TestOnConnectMigrate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	dir := behindTenant(t, r, "cumigrate")

	// off (the default): the old schema is served.
	if err := session(r, "cumigrate", newSchema); err == nil || !strings.Contains(err.Error(), "note") {
		t.Fatalf("on_connect off: %v, want the old schema", err)
	}

	nc := cfg
	nc.Migrations.Dir, nc.Migrations.OnConnect = dir, router.OnConnectMigrate
	if err := r.Reload(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() { errs <- session(r, "cumigrate", newSchema) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a client did not get the new schema: %v", err)
		}
	}
	if n := count(t, r, "cumigrate", "SELECT count(*)::int FROM side_effect"); n != 1 {
		t.Fatalf("0002 ran %d times, want 1", n)
	}
	if n := count(t, r, "cumigrate", "SELECT count(*)::int FROM public.pgtenant_migrations WHERE version = 2"); n != 1 {
		t.Fatalf("version 2 recorded %d times, want 1", n)
	}
	if got := metric(t, r.Registry(), catchupMetric, "outcome=migrated"); got != 1 {
		t.Fatalf("migrated runs = %v, want 1", got)
	}
	// Current now: no more runs (each would query the catalog), only
	// memory.
	runs := metric(t, r.Registry(), catchupMetric, "outcome=checked")
	cur := metric(t, r.Registry(), catchupMetric, "outcome=current")
	for range 10 {
		if err := connect(r, "cumigrate"); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, r.Registry(), catchupMetric, "outcome=checked"); got != runs {
		t.Fatalf("a current tenant was checked in the catalog again: %v runs, was %v", got, runs)
	}
	if got := metric(t, r.Registry(), catchupMetric, "outcome=current"); got != cur+10 {
		t.Fatalf("current = %v, want %v", got, cur+10)
	}
}

// With on_connect refuse, a client of a behind tenant is told 57P03 while
// the tenant is migrated in the background; a retry then gets the new
// schema.
func TestOnConnectRefuse(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	dir := behindTenant(t, r, "curefuse")
	nc := cfg
	nc.Migrations.Dir, nc.Migrations.OnConnect = dir, router.OnConnectRefuse
	if err := r.Reload(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	err := session(r, "curefuse", newSchema)
	if sqlState(err) != "57P03" || !strings.Contains(err.Error(), "tenant curefuse is being migrated to schema version 2; retry in a moment") {
		t.Fatalf("first connect: %v, want 57P03 being migrated", err)
	}
	poll.Until(t, time.Minute, "a retry to get the new schema", func() bool {
		err := session(r, "curefuse", newSchema)
		if err != nil && sqlState(err) != "57P03" {
			t.Fatalf("retry: %v", err)
		}
		return err == nil
	})
	if n := count(t, r, "curefuse", "SELECT count(*)::int FROM side_effect"); n != 1 {
		t.Fatalf("0002 ran %d times, want 1", n)
	}
	if got := metric(t, r.Registry(), catchupMetric, "outcome=refused"); got < 1 {
		t.Fatalf("refused = %v", got)
	}
}

// A router whose migration files differ from the registered ones does not
// start.
func TestOnConnectChecksumRefused(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	behindTenant(t, r, "cuchecksum")
	edited := map[string]string{
		"0001_init.sql":     mig1["0001_init.sql"] + " -- edited",
		"0002_add_note.sql": mig2["0002_add_note.sql"],
	}
	nc := cfg
	nc.Listen = "127.0.0.1:0"
	nc.Migrations.Dir, nc.Migrations.OnConnect = writeMigrations(t, edited), router.OnConnectMigrate
	r2, err := router.New(context.Background(), nc, router.Options{})
	if err == nil {
		r2.Close()
		t.Fatal("a router with an edited migration file started")
	}
	if !strings.Contains(err.Error(), "0001_init.sql") || !strings.Contains(err.Error(), "migrations.dir") {
		t.Fatalf("err = %v, want it to name the file and migrations.dir", err)
	}
}

// A tenant whose catch-up fails (its own schema conflicts with the
// migration) is told so with 57P03, and nothing is half-applied.
func TestOnConnectMigrationFails(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	dir := behindTenant(t, r, "cufail")
	// The tenant made the column 0002 adds: 0002 fails in its database.
	if err := session(r, "cufail", "ALTER TABLE items ADD COLUMN note text"); err != nil {
		t.Fatal(err)
	}
	nc := cfg
	nc.Migrations.Dir, nc.Migrations.OnConnect = dir, router.OnConnectMigrate
	if err := r.Reload(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	err := session(r, "cufail", "SELECT 1")
	if sqlState(err) != "57P03" || !strings.Contains(err.Error(), "tenant cufail could not be migrated to schema version 2") {
		t.Fatalf("connect of a tenant whose migration fails: %v, want 57P03 could not be migrated", err)
	}
	if got := metric(t, r.Registry(), catchupMetric, "outcome=failed"); got < 1 {
		t.Fatalf("failed = %v", got)
	}
	nc.Migrations.OnConnect = router.OnConnectOff
	if err := r.Reload(context.Background(), nc); err != nil {
		t.Fatal(err)
	}
	if n := count(t, r, "cufail", "SELECT count(*)::int FROM side_effect"); n != 0 {
		t.Fatalf("the failed 0002 left %d side effects, want 0 (one transaction)", n)
	}
}
