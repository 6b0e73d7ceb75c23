package resolver_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// These tests run resolvers on a real catalog (package catalog).

func mustKey(t *testing.T) []byte {
	t.Helper()
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func openCatalog(t *testing.T, pool *pgxpool.Pool, key []byte) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.Open(t.Context(), pool, key)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// lockWaitProvider is a provider whose first Create returns only once
// `waiters` other sessions wait for an advisory lock in the catalog's
// database, so the test proves those instances were held off by the lock
// rather than lucky. Later calls (a bug) return at once.
type lockWaitProvider struct {
	fakeProvider
	pool    *pgxpool.Pool
	waiters int
}

func (p *lockWaitProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	if p.calls.Load() > 0 {
		return p.fakeProvider.Create(ctx, tenant)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		err := p.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		if err != nil {
			return provision.Endpoint{}, err
		}
		if n >= p.waiters {
			return p.fakeProvider.Create(ctx, tenant)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return provision.Endpoint{}, ctx.Err()
		}
	}
}

// Router instances (one pool, catalog and resolver each) resolving one new
// tenant at once create it once, and every caller gets the same route.
func TestResolveSharedCatalog(t *testing.T) {
	tests := []struct {
		name                  string
		instances, perInstant int
	}{
		{"one instance, 100 callers", 1, 100},
		{"two instances, 50 callers each", 2, 50},
		{"four instances, 25 callers each", 4, 25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			dsn := pgtest.NewDB(t)
			key := mustKey(t)
			p := &lockWaitProvider{pool: pgtest.NewPool(t, dsn), waiters: tt.instances - 1}
			var resolvers []*resolver.Resolver
			for range tt.instances {
				cfg := resolver.Config{FillTimeout: 30 * time.Second, Log: discard}
				r := resolver.New(cfg, openCatalog(t, pgtest.NewPool(t, dsn), key), p)
				defer r.Close()
				resolvers = append(resolvers, r)
			}

			type result struct {
				rt  resolver.Route
				err error
			}
			results := make(chan result, tt.instances*tt.perInstant)
			var wg sync.WaitGroup
			for _, r := range resolvers {
				for range tt.perInstant {
					wg.Go(func() {
						rt, err := r.Resolve(t.Context(), "acme")
						results <- result{rt, err}
					})
				}
			}
			wg.Wait()
			close(results)

			if got := p.calls.Load(); got != 1 {
				t.Errorf("Create called %d times, want 1", got)
			}
			vias := map[resolver.Via]int{}
			for res := range results {
				if res.err != nil {
					t.Fatal(res.err)
				}
				if res.rt.Password != fakePassword || res.rt.Database != "db_acme" {
					t.Fatalf("route %v is not the created one", res.rt)
				}
				vias[res.rt.Via]++
			}
			// The callers of one instance share its fill: one instance
			// created the tenant, the others found it in the catalog.
			want := map[resolver.Via]int{resolver.ViaCreated: tt.perInstant}
			if tt.instances > 1 {
				want[resolver.ViaCatalog] = (tt.instances - 1) * tt.perInstant
			}
			if len(vias) != len(want) || vias[resolver.ViaCreated] != want[resolver.ViaCreated] ||
				vias[resolver.ViaCatalog] != want[resolver.ViaCatalog] {
				t.Errorf("routes by Via = %v, want %v", vias, want)
			}
		})
	}
}

func TestResolveFailingCreateWithCatalog(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	p := &fakeProvider{err: errors.New("create database: permission denied")}
	r := resolver.New(resolver.Config{Log: discard}, cat, p)
	defer r.Close()

	_, err := r.Resolve(t.Context(), "acme")
	if !errors.Is(err, resolver.ErrProvision) || errors.Is(err, resolver.ErrCatalog) {
		t.Fatalf("err = %v, want ErrProvision", err)
	}
	if strings.Contains(err.Error(), fakePassword) {
		t.Fatalf("error %q contains the password", err)
	}
	if entries, err := cat.List(t.Context(), "", 0); err != nil || len(entries) != 0 {
		t.Fatalf("a failed creation left rows: %v, %v", entries, err)
	}
}

// A catalog that goes away is reported as ErrCatalog, never ErrProvision,
// and the provider is not called.
func TestResolveCatalogUnreachable(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	pool.Close()
	p := &fakeProvider{}
	r := resolver.New(resolver.Config{Log: discard}, cat, p)
	defer r.Close()

	_, err := r.Resolve(t.Context(), "acme")
	if !errors.Is(err, resolver.ErrCatalog) || errors.Is(err, resolver.ErrProvision) || p.calls.Load() != 0 {
		t.Fatalf("err = %v after %d Create calls; want ErrCatalog and none", err, p.calls.Load())
	}
}
