package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
)

// Two catalogs on one database stand for two router instances: racing
// creations of different tenants never overshoot max_tenants or
// creates_per_minute, and every refusal is a *provision.LimitError.
func TestCreateLimitsAcrossInstances(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limits  catalog.CreateLimits
		setting string
	}{
		{"max_tenants", catalog.CreateLimits{MaxTenants: 3}, provision.LimitMaxTenants},
		{"creates_per_minute", catalog.CreateLimits{CreatesPerMinute: 3}, provision.LimitCreatesPerMinute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			pool := pgtest.NewPool(t, pgtest.NewDB(t))
			key := mustKey(t)
			cats := []*catalog.Catalog{openCatalog(t, pool, key), openCatalog(t, pgtest.NewPool(t, pool.Config().ConnString()), key)}
			for _, c := range cats {
				c.SetCreateLimits(tc.limits)
			}
			ctx := t.Context()
			// One tenant exists already (it counts).
			var calls int
			if _, _, err := cats[0].Ensure(ctx, "first", "fake", created(endpoint("first", "pw"), &calls)); err != nil {
				t.Fatal(err)
			}
			var creates, refused atomic.Int32
			var wg sync.WaitGroup
			for i := range 12 {
				wg.Go(func() {
					tenant := fmt.Sprintf("t%d", i)
					_, _, err := cats[i%2].Ensure(ctx, tenant, "fake", func(context.Context) (provision.Endpoint, error) {
						creates.Add(1)
						time.Sleep(10 * time.Millisecond) // a slow provider widens the race window
						return endpoint(tenant, "pw"), nil
					})
					var le *provision.LimitError
					switch {
					case errors.As(err, &le):
						if le.Setting != tc.setting || le.Max != 3 {
							t.Errorf("%s: %+v", tenant, le)
						}
						if tc.setting == provision.LimitCreatesPerMinute && (le.RetryAfter <= 0 || le.RetryAfter > time.Minute) {
							t.Errorf("%s: RetryAfter %s, want within the minute", tenant, le.RetryAfter)
						}
						refused.Add(1)
					case err != nil:
						t.Errorf("%s: %v", tenant, err)
					}
				})
			}
			wg.Wait()
			if creates.Load() != 2 || refused.Load() != 10 {
				t.Fatalf("%d created, %d refused; want 2 and 10 (limit 3, one existing)", creates.Load(), refused.Load())
			}
			// A tenant in the catalog is returned whatever the limits.
			if _, isNew, err := cats[1].Ensure(ctx, "first", "fake", created(endpoint("first", "pw"), &calls)); err != nil || isNew {
				t.Fatalf("existing tenant over the limit: new=%v, %v", isNew, err)
			}
		})
	}
}
