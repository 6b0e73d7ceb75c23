package catalog_test

import (
	"slices"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

func TestCatalogBlockList(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	cat := openCatalog(t, pool, key)
	ctx := t.Context()

	list := func(c *catalog.Catalog) []string {
		t.Helper()
		l, err := c.BlockedList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := list(cat); l == nil || len(l) != 0 {
		t.Fatalf("new catalog: BlockedList = %#v, want empty", l)
	}
	for _, tenant := range []string{"zulu", "alpha", "zulu"} { // idempotent
		if err := cat.Block(ctx, tenant); err != nil {
			t.Fatal(err)
		}
	}
	if l := list(cat); !slices.Equal(l, []string{"alpha", "zulu"}) {
		t.Fatalf("BlockedList = %v", l)
	}
	for range 2 {
		if err := cat.Unblock(ctx, "zulu"); err != nil {
			t.Fatal(err)
		}
	}
	if l := list(cat); !slices.Equal(l, []string{"alpha"}) {
		t.Fatalf("after Unblock: %v", l)
	}

	// A catalog made before the block list existed gets the table when it
	// is opened again; the list is shared by every instance.
	if _, err := pool.Exec(ctx, `DROP TABLE pgtenant.blocked`); err != nil {
		t.Fatal(err)
	}
	again := openCatalog(t, pool, key)
	if l := list(again); len(l) != 0 {
		t.Fatalf("re-created block list: %v", l)
	}
	if err := again.Block(ctx, "bravo"); err != nil {
		t.Fatal(err)
	}
	if l := list(cat); !slices.Equal(l, []string{"bravo"}) {
		t.Fatalf("other instance sees %v", l)
	}
}
