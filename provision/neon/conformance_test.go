package neon_test

import (
	"context"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/neon/neontest"
	"github.com/pgtenant/pgtenant/provision/providertest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// TestConformance runs the providers' conformance suite against the Neon
// provider and the fake Neon API, in branch and in project mode, routing
// through the fake's compute proxy with TLS verify-full as to Neon.
func TestConformance(t *testing.T) {
	be, err := neontest.NewBackend(t.Context(), pgtest.Shared(t).AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close) // after the fake's Close (cleanups run last-in first-out)
	s := newFake(t, neontest.Config{Backend: be, BranchLimit: 100})
	upstream := router.Upstream{
		Proxy: proxy.UpstreamConfig{TLS: proxy.TLSVerifyFull, RootCAs: s.CAPool(), ForwardParams: router.NeonPoolerParams},
		Dial:  s.Dialer(),
	}
	lose := func(string) { s.DropAfterCreate(1) }

	t.Run("branch", func(t *testing.T) {
		cp := templateProject(t, s, "tenants")
		p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: cp.Project.ID}}, UniquePasswords: true})
		providertest.Run(t, providertest.Backend{
			Provider: p,
			Count: func(_ context.Context, tenant string) (int, error) {
				return count(branchNames(s, cp.Project.ID), "tenant-"+tenant), nil
			},
			LoseCreateResponse: lose,
			Upstream:           upstream,
		})
	})
	t.Run("project", func(t *testing.T) {
		p := newProvider(t, s, neon.Config{Mode: neon.ModeProject})
		providertest.Run(t, providertest.Backend{
			Provider: p,
			Count: func(_ context.Context, tenant string) (int, error) {
				n := 0
				for _, pr := range s.Projects() {
					if pr.Name == "tenant-"+tenant {
						n++
					}
				}
				return n, nil
			},
			LoseCreateResponse: lose,
			Upstream:           upstream,
		})
	})
}
