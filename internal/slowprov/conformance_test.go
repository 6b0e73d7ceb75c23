package slowprov_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/slowprov"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/providertest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestConformance runs the providers' conformance suite against the local
// provider posing as a slow one (released: its creations go through), so
// that the routers of the suite create its tenants in the background and
// answer 57P03 "being created" until they are ready.
func TestConformance(t *testing.T) {
	c := pgtest.Shared(t)
	admin := pgtest.NewPool(t, c.AdminDSN("postgres"))
	cfg := local.Config{Prefix: "slowconf_"}
	lp := local.New(cfg, admin)
	if _, err := lp.EnsureTemplate(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	p := slowprov.New(lp, 10*time.Minute)
	p.Release()
	providertest.Run(t, providertest.Backend{
		Provider: p,
		Count: func(ctx context.Context, tenant string) (int, error) {
			var n int
			err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, cfg.Prefix+tenant).Scan(&n)
			return n, err
		},
		SkipLost: "the local provider's lost answers are tested in provision/local",
	})
}
