package catalog_test

import (
	"maps"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

func TestCatalogPoolModes(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	cat := openCatalog(t, pool, key)
	ctx := t.Context()

	modes := func(c *catalog.Catalog) map[string]string {
		t.Helper()
		m, err := c.PoolModes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := modes(cat); m == nil || len(m) != 0 {
		t.Fatalf("new catalog: PoolModes = %#v, want empty", m)
	}
	for _, set := range [][2]string{{"alpha", "session"}, {"bravo", "off"}, {"alpha", "transaction"}} {
		if err := cat.SetPoolMode(ctx, set[0], set[1]); err != nil {
			t.Fatal(err)
		}
	}
	if m := modes(cat); !maps.Equal(m, map[string]string{"alpha": "transaction", "bravo": "off"}) {
		t.Fatalf("PoolModes = %v", m)
	}
	if err := cat.SetPoolMode(ctx, "alpha", "statement"); err == nil {
		t.Fatal("SetPoolMode took mode statement")
	}
	if _, err := pool.Exec(ctx, `INSERT INTO pgtenant.pool_modes (tenant, mode) VALUES ('x', 'bogus')`); err == nil {
		t.Fatal("the table took mode bogus")
	}
	for range 2 { // idempotent
		if err := cat.ClearPoolMode(ctx, "bravo"); err != nil {
			t.Fatal(err)
		}
	}
	if m := modes(cat); !maps.Equal(m, map[string]string{"alpha": "transaction"}) {
		t.Fatalf("after ClearPoolMode: %v", m)
	}

	// A catalog made before per-tenant pool modes existed gets the table
	// when it is opened again; the modes are shared by every instance.
	if _, err := pool.Exec(ctx, `DROP TABLE pgtenant.pool_modes`); err != nil {
		t.Fatal(err)
	}
	again := openCatalog(t, pool, key)
	if m := modes(again); len(m) != 0 {
		t.Fatalf("re-created pool modes: %v", m)
	}
	if err := again.SetPoolMode(ctx, "charlie", "session"); err != nil {
		t.Fatal(err)
	}
	if m := modes(cat); !maps.Equal(m, map[string]string{"charlie": "session"}) {
		t.Fatalf("other instance sees %v", m)
	}
}
