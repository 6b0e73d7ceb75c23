package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/router"
)

// TestTenantsPlaceAndRoute runs `pgtenant serve` with provider.kind local
// and provider.also [static], and places and routes tenants with
// `pgtenant tenants place` and `tenants route`: into the catalog directly
// (--config, the DSN from standard input) and through the admin API.
func TestTenantsPlaceAndRoute(t *testing.T) {
	c := pgtest.Shared(t)
	catDB, regDB, plDB := pgtest.CreateDB(t, c), pgtest.CreateDB(t, c), pgtest.CreateDB(t, c)
	t.Setenv(router.EnvPassword, "serve-secret")
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(catDB))
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	t.Setenv(router.EnvAdminToken, testAdminToken)
	cfg := writeFile(t, "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ncache:\n  negative_ttl: -1s\n"+
		"provider:\n  also: [static]\n  local:\n    prefix: pr_\n")
	m, stderr, _ := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	addr := m[1]
	am := regexp.MustCompile(`msg="admin listening" addr=(\S+)`).FindStringSubmatch(stderr.String())
	if am == nil {
		t.Fatalf("no admin listening line:\n%s", stderr.String())
	}
	api := "http://" + am[1]
	dbOf := func(tenant string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, "postgres://"+tenant+":serve-secret@"+addr+"/app?sslmode=disable")
		if err != nil {
			return "", err
		}
		defer conn.Close(ctx)
		var db string
		err = conn.QueryRow(ctx, "SELECT current_database()").Scan(&db)
		return db, err
	}
	tenants := func(args ...string) (string, error) {
		var out strings.Builder
		err := run(context.Background(), append([]string{"tenants"}, args...), &out, io.Discard)
		return out.String(), err
	}
	dsnOf := func(db string) string {
		return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", c.AdminUser(), c.AdminPassword(), c.Host(), c.Port(), db)
	}

	// Into the catalog, the DSN from standard input: the password is
	// neither on the command line nor in the output.
	var out string
	var err error
	withStdin(t, dsnOf(regDB)+"\n", func() { out, err = tenants("route", "reg", "--dsn-stdin", "--config", cfg) })
	if err != nil || !strings.Contains(out, "tenant reg routed") || strings.Contains(out, c.AdminPassword()) {
		t.Fatalf("route --dsn-stdin: %v\n%s", err, out)
	}
	if db, err := dbOf("reg"); err != nil || db != regDB {
		t.Fatalf("reg: %q, %v; want %s", db, err, regDB)
	}

	// Placed on static through the API: no route yet, so 28000; then one.
	if out, err := tenants("place", "pl", "static", "--admin", api); err != nil || !strings.Contains(out, "placed on provider static") {
		t.Fatalf("place: %v\n%s", err, out)
	}
	if _, err := dbOf("pl"); err == nil || !strings.Contains(err.Error(), "28000") {
		t.Fatalf("pl placed on static without a route: %v; want 28000", err)
	}
	if out, err := tenants("route", "pl", "--dsn", dsnOf(plDB), "--admin", api); err != nil || !strings.Contains(out, "tenant pl routed") {
		t.Fatalf("route --admin: %v\n%s", err, out)
	}
	if db, err := dbOf("pl"); err != nil || db != plDB {
		t.Fatalf("pl: %q, %v; want %s", db, err, plDB)
	}

	// A tenant created on local stays there.
	if db, err := dbOf("loc"); err != nil || db != "pr_loc" {
		t.Fatalf("loc: %q, %v; want pr_loc", db, err)
	}
	if _, err := tenants("place", "loc", "static", "--admin", api); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("placing a created tenant elsewhere: %v; want 409", err)
	}
	if _, err := tenants("place", "loc", "nosuch", "--config", cfg); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("placing on an unknown provider: %v", err)
	}
	if out, err := tenants("delete", "loc", "--yes", "--config", cfg); err != nil || !strings.Contains(out, "provider local: deleted") {
		t.Fatalf("delete loc: %v\n%s", err, out)
	}

	// The registered route removed: reg, not placed, is created on the
	// default provider at its next connect.
	if out, err := tenants("route", "reg", "--delete", "--admin", api); err != nil || !strings.Contains(out, "route removed") {
		t.Fatalf("route --delete: %v\n%s", err, out)
	}
	if db, err := dbOf("reg"); err != nil || db != "pr_reg" {
		t.Fatalf("reg after its route was removed: %q, %v; want pr_reg (local)", db, err)
	}
}
