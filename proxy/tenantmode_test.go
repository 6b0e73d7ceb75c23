package proxy_test

import (
	"context"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
)

// hasPool reports whether m holds a pool for tenant.
func hasPool(m *pool.Manager, tenant string) bool {
	for _, p := range m.Pools() {
		if p.Key.Tenant == tenant {
			return true
		}
	}
	return false
}

func TestTenantPoolModes(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	sess, off, dflt := newTenant("tmsess"), newTenant("tmoff"), newTenant("tmdef")
	r.srv.SetTenantPoolModes(map[string]proxy.PoolMode{sess: proxy.PoolSession, off: proxy.PoolOff, "x": "statement"})
	if got := r.srv.TenantPoolModes(); len(got) != 2 || got[sess] != proxy.PoolSession || got[off] != proxy.PoolOff {
		t.Fatalf("TenantPoolModes = %v", got)
	}

	for _, tenant := range []string{sess, off} {
		c := r.simple(t, tenant)
		pid := queryString(t, c, "SELECT pg_backend_pid()::text")
		if _, err := c.Exec(ctx, "SET statement_timeout = '777ms'"); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if got := queryString(t, c, "SHOW statement_timeout"); got != "777ms" {
				t.Errorf("%s: statement_timeout = %q, want the SET's 777ms", tenant, got)
			}
			if got := queryString(t, c, "SELECT pg_backend_pid()::text"); got != pid {
				t.Errorf("%s: backend %s, then %s", tenant, pid, got)
			}
		}
	}
	if !hasPool(m, sess) {
		t.Errorf("tenant in session mode has no pool")
	}
	// In session mode two clients of the tenant, taking turns, keep a
	// server connection each (in transaction mode they would share one).
	a, b := r.simple(t, sess), r.simple(t, sess)
	pidA := queryString(t, a, "SELECT pg_backend_pid()::text")
	if pidB := queryString(t, b, "SELECT pg_backend_pid()::text"); pidB == pidA {
		t.Errorf("two session-mode clients share backend %s", pidA)
	}
	if got := queryString(t, a, "SELECT pg_backend_pid()::text"); got != pidA {
		t.Errorf("session-mode client moved from backend %s to %s", pidA, got)
	}
	if hasPool(m, off) {
		t.Errorf("tenant in mode off is pooled")
	}

	// The router's default for the others: transaction mode, pooled.
	_ = queryString(t, r.simple(t, dflt), "SELECT 1")
	if !hasPool(m, dflt) {
		t.Errorf("tenant without a mode is not pooled")
	}

	// The client's option wins over the tenant's mode.
	offOpt := newTenant("tmoffopt")
	r.srv.SetTenantPoolModes(map[string]proxy.PoolMode{offOpt: proxy.PoolOff})
	_ = queryString(t, r.simple(t, offOpt, "options=-c%20pgtenant.pool_mode%3Dtransaction"), "SELECT 1")
	if !hasPool(m, offOpt) {
		t.Errorf("client asking for transaction mode of a tenant in mode off is not pooled")
	}
}
