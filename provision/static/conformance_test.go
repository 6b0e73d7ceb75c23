package static_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/providertest"
	"github.com/pgtenant/pgtenant/provision/static"
	"github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestConformance runs the providers' conformance suite against the
// static provider's registered routes. The static provider creates
// nothing, so the suite's Prepare does what an operator does: it creates
// the tenant's database on the shared throwaway Postgres and registers its
// route in a catalog (as PUT /v1/tenants/{id}/route does). Count is the
// tenant's registered routes in that catalog: 1 from Prepare on (Finds),
// 0 after Delete. A lost create answer does not apply: Create sends no
// request that could be lost.
func TestConformance(t *testing.T) {
	c := pgtest.Shared(t)
	cat, err := catalog.Open(t.Context(), pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := static.New(static.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p.SetStore(router.StaticStore{Cat: cat})
	providertest.Run(t, providertest.Backend{
		Provider: p,
		Finds:    true,
		Prepare: func(ctx context.Context, tenant string) error {
			db := pgtest.CreateDB(t, c)
			return cat.SetRoute(ctx, tenant, static.Name, provision.Endpoint{
				Host: c.Host(), Port: c.Port(), Database: db, User: c.AdminUser(), Password: c.AdminPassword(),
				TLS: "disable", ProviderID: static.RegisteredID,
			})
		},
		Count: func(ctx context.Context, tenant string) (int, error) {
			return cat.CountOn(ctx, tenant, static.Name)
		},
		SkipLost: "the static provider sends no create request: it only looks routes up",
		Timeout:  time.Minute,
	})
}

func mustKey(t *testing.T) []byte {
	t.Helper()
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return key
}
