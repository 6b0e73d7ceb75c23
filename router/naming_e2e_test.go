package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// tenantConn opens a session as tenant through r, closed when the test ends.
func tenantConn(t *testing.T, r *router.Router, tenant string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		t.Fatalf("connect as %s: %v", tenant, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// visibleNames is every database, role and session name (database, role,
// application) a session can read in the server's shared catalogs.
func visibleNames(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `SELECT datname::text FROM pg_catalog.pg_database
		UNION ALL SELECT rolname::text FROM pg_catalog.pg_roles
		UNION ALL SELECT concat_ws(' ', datname, usename, application_name) FROM pg_catalog.pg_stat_activity
		UNION ALL SELECT datname::text FROM pg_catalog.pg_stat_database WHERE datname IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func mentioning(names []string, id string) []string {
	var out []string
	for _, n := range names {
		if strings.Contains(n, id) {
			out = append(out, n)
		}
	}
	return out
}

func upstreamDB(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var db string
	if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	return db
}

// With provider.local.naming: hashed, a tenant connected through the router
// finds no trace of another tenant's ID in pg_database, pg_roles,
// pg_stat_activity or pg_stat_database (while that tenant has a session
// open), still cannot connect to the other tenant's database, and a
// deleted tenant's hashed database is gone.
func TestHashedNamingHidesTenantIDs(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, func(c *router.Config) { c.Provider.Local.Naming = local.NamingHashed })
	const a, b = "hiddenalpha", "hiddenbravo"
	connB := tenantConn(t, r, b)
	connA := tenantConn(t, r, a)
	dbA, dbB := upstreamDB(t, connA), upstreamDB(t, connB)
	for _, db := range []string{dbA, dbB} {
		if !strings.HasPrefix(db, cfg.Provider.Local.Prefix) || len(db) != len(cfg.Provider.Local.Prefix)+local.HashLen {
			t.Fatalf("tenant database %q: want %s + %d hash characters", db, cfg.Provider.Local.Prefix, local.HashLen)
		}
	}
	names := visibleNames(t, connA)
	if !contains(names, dbB) {
		t.Fatalf("tenant %s does not see database %q at all; the test looks in the wrong place: %q", a, dbB, names)
	}
	for _, id := range []string{a, b} {
		if m := mentioning(names, id); len(m) > 0 {
			t.Errorf("tenant %s can read %q, which contain tenant ID %q", a, m, id)
		}
	}

	// A's own upstream role still cannot open B's database.
	epA, ok, err := r.Catalog().Lookup(t.Context(), a)
	if err != nil || !ok {
		t.Fatalf("catalog lookup %s: %v %v", a, ok, err)
	}
	cc, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cc.Host, cc.Port, cc.User, cc.Password, cc.Database = epA.Host, epA.Port, epA.User, epA.Password, dbB
	if conn, err := pgx.ConnectConfig(t.Context(), cc); err == nil {
		conn.Close(context.Background())
		t.Fatalf("tenant %s's role connected to tenant %s's database", a, b)
	} else if sqlState(err) != "42501" {
		t.Fatalf("tenant %s's role connecting to %s's database: %v; want 42501", a, b, err)
	}

	// Delete finds the hashed names.
	_ = connB.Close(context.Background())
	d, err := adminapi.DeleteTenant(t.Context(), r.Provider(), r.Catalog(), b)
	if err != nil || !d.Provider || !d.Catalog {
		t.Fatalf("DeleteTenant(%s) = %+v, %v; want both deleted", b, d, err)
	}
	if got := mentioning(visibleNames(t, connA), dbB); len(got) > 0 {
		t.Fatalf("after deleting %s, %q are still there", b, got)
	}
}

// Plain naming (the default) is unchanged: database and role are the
// prefix and the tenant ID, which other tenants can read.
func TestPlainNamingUnchanged(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	const a, b = "plainalpha", "plainbravo"
	connB := tenantConn(t, r, b)
	connA := tenantConn(t, r, a)
	p := cfg.Provider.Local.Prefix
	if got := upstreamDB(t, connA); got != p+a {
		t.Fatalf("database %q, want %q", got, p+a)
	}
	if got := upstreamDB(t, connB); got != p+b {
		t.Fatalf("database %q, want %q", got, p+b)
	}
	if names := visibleNames(t, connA); !contains(names, p+b) {
		t.Fatalf("plain naming: %q not among %q", p+b, names)
	}
}

// Switching a fleet from plain to hashed names strands nobody: a tenant
// created under plain keeps its database (the catalog has it) and can be
// deleted by the hashed router; a new tenant gets a hashed name.
func TestNamingSwitchPlainToHashed(t *testing.T) {
	pgtest.CheckGoroutines(t)
	rPlain, cfg := start(t, nil)
	const old, nu = "switchedold", "switchednew"
	p := cfg.Provider.Local.Prefix
	if got := upstreamDB(t, tenantConn(t, rPlain, old)); got != p+old {
		t.Fatalf("plain tenant's database %q, want %q", got, p+old)
	}

	rHashed, _ := start(t, func(c *router.Config) {
		c.Catalog.DSN, c.Catalog.Key = cfg.Catalog.DSN, cfg.Catalog.Key // the same fleet
		c.Provider.Local.Naming = local.NamingHashed
	})
	connOld := tenantConn(t, rHashed, old)
	if got := upstreamDB(t, connOld); got != p+old {
		t.Fatalf("after the switch the old tenant is in %q, want its own %q", got, p+old)
	}
	if got := upstreamDB(t, tenantConn(t, rHashed, nu)); strings.Contains(got, nu) {
		t.Fatalf("new tenant after the switch got database %q, which names it", got)
	}
	_ = connOld.Close(context.Background())

	d, err := adminapi.DeleteTenant(t.Context(), rHashed.Provider(), rHashed.Catalog(), old)
	if err != nil || !d.Provider || !d.Catalog {
		t.Fatalf("DeleteTenant(%s) on the hashed router = %+v, %v; want both deleted", old, d, err)
	}
	admin := pgtest.NewPool(t, cfg.Provider.Local.AdminDSN)
	var left bool
	if err := admin.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", p+old).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left {
		t.Fatalf("database %q left after deleting %s", p+old, old)
	}
	if err := rHashed.Provider().Delete(t.Context(), old); err == nil || !strings.Contains(err.Error(), provision.ErrTenantNotFound.Error()) {
		t.Fatalf("second Delete = %v; want not found", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
