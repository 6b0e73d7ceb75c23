package catalog_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
)

// Two catalogs on one database stand for two router instances claiming the
// background creation of one tenant: one claim wins, the other sees it
// running; a silent creator is taken over after the lease; the finish
// makes the tenant ready for both, and a lost claim cannot finish.
func TestClaimCreation(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	a, b := openCatalog(t, pool, key), openCatalog(t, pgtest.NewPool(t, pool.Config().ConnString()), key)
	ctx := t.Context()
	const hour = time.Hour

	// Racing claims: exactly one owner.
	var wg sync.WaitGroup
	var mu sync.Mutex
	owners := map[string]int{}
	for i, c := range []*catalog.Catalog{a, b, a, b} {
		wg.Go(func() {
			_, cr, err := c.ClaimCreation(ctx, "slow", "fake", string(rune('p'+i)), hour, hour)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			owners[cr.Owner]++
			mu.Unlock()
			if cr.State != provision.CreationRunning {
				t.Errorf("state %q, want running", cr.State)
			}
		})
	}
	wg.Wait()
	if len(owners) != 1 {
		t.Fatalf("owners %v, want one for all four claims", owners)
	}
	var owner string
	for o := range owners {
		owner = o
	}
	if cr, ok, err := b.Creation(ctx, "slow"); err != nil || !ok || cr.State != provision.CreationRunning || cr.Provider != "fake" {
		t.Fatalf("Creation: %+v %v %v", cr, ok, err)
	}
	if ok, err := a.HeartbeatCreation(ctx, "slow", owner); err != nil || !ok {
		t.Fatalf("heartbeat of the owner: %v %v", ok, err)
	}

	// An owner silent for longer than its lease: the next claim takes
	// over, keeping the start.
	first, _, _ := a.Creation(ctx, "slow")
	if _, cr, err := b.ClaimCreation(ctx, "slow", "fake", "early", 0, hour); err != nil || cr.Owner == "early" {
		t.Fatalf("a claim judged by the claimer's own zero lease: %+v %v, want the owner's lease to count", cr, err)
	}
	if _, err := pool.Exec(ctx, `UPDATE pgtenant.creations SET heartbeat_at = now() - interval '61 minutes'`); err != nil {
		t.Fatal(err)
	}
	_, took, err := b.ClaimCreation(ctx, "slow", "fake", "taker", hour, hour)
	if err != nil || took.Owner != "taker" || !took.Started.Equal(first.Started) {
		t.Fatalf("takeover: %+v %v (first started %s)", took, err, first.Started)
	}
	if ok, err := a.HeartbeatCreation(ctx, "slow", owner); err != nil || ok {
		t.Fatalf("heartbeat after the takeover: %v %v, want false", ok, err)
	}
	if err := a.FinishCreation(ctx, "slow", "fake", owner, endpoint("slow", "old")); !errors.Is(err, catalog.ErrClaimLost) {
		t.Fatalf("finish of a lost claim: %v, want ErrClaimLost", err)
	}
	if err := b.FinishCreation(ctx, "slow", "fake", "taker", endpoint("slow", "new")); err != nil {
		t.Fatal(err)
	}
	ep, ok, err := a.Lookup(ctx, "slow")
	if err != nil || !ok || ep.Password != "new" {
		t.Fatalf("Lookup after finish: %v %v %v", ep, ok, err)
	}
	if _, ok, _ := a.Creation(ctx, "slow"); ok {
		t.Fatal("the creation row outlived the finish")
	}
	ep, cr, err := b.ClaimCreation(ctx, "slow", "fake", "late", hour, hour)
	if err != nil || cr.State != provision.CreationReady || ep.Password != "new" {
		t.Fatalf("claim of a ready tenant: %+v %v %v", cr, ep, err)
	}
}

// A failed creation is reported until retryAfter has passed, then a new
// claim starts afresh.
func TestFailCreation(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	ctx := t.Context()
	if _, _, err := cat.ClaimCreation(ctx, "bad", "fake", "one", time.Hour, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := cat.FailCreation(ctx, "bad", "one", "quota exceeded"); err != nil {
		t.Fatal(err)
	}
	_, cr, err := cat.ClaimCreation(ctx, "bad", "fake", "two", time.Hour, time.Hour)
	if err != nil || cr.State != provision.CreationFailed || cr.Error != "quota exceeded" || cr.Owner != "one" {
		t.Fatalf("claim within retryAfter: %+v %v, want the failure", cr, err)
	}
	_, cr, err = cat.ClaimCreation(ctx, "bad", "fake", "two", time.Hour, 0)
	if err != nil || cr.State != provision.CreationRunning || cr.Owner != "two" || cr.Error != "" {
		t.Fatalf("claim after retryAfter: %+v %v, want a new claim", cr, err)
	}
}

// A running background creation counts against max_tenants.
func TestClaimCreationLimits(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	cat.SetCreateLimits(catalog.CreateLimits{MaxTenants: 1})
	ctx := t.Context()
	if _, _, err := cat.ClaimCreation(ctx, "one", "fake", "o", 0, time.Hour); err != nil {
		t.Fatal(err)
	}
	var le *provision.LimitError
	if _, _, err := cat.ClaimCreation(ctx, "two", "fake", "o", time.Hour, time.Hour); !errors.As(err, &le) {
		t.Fatalf("second creation over max_tenants 1: %v, want a LimitError", err)
	}
	// A takeover of the running one (claimed with a zero lease: silent at
	// once) is no new tenant.
	if _, cr, err := cat.ClaimCreation(ctx, "one", "fake", "p", time.Hour, time.Hour); err != nil || cr.Owner != "p" {
		t.Fatalf("takeover at the limit: %+v %v", cr, err)
	}
}
