package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// namedProvider is a fakeProvider under another name.
type namedProvider struct {
	fakeProvider
	name string
}

func (p *namedProvider) Name() string { return p.name }

// findsNothing is a provider that only finds databases, and finds none.
type findsNothing struct{}

func (findsNothing) Name() string { return "finder" }
func (findsNothing) Create(context.Context, string) (provision.Endpoint, error) {
	return provision.Endpoint{}, fmt.Errorf("no route: %w", provision.ErrTenantNotFound)
}

// A tenant placed on another provider is created by that one, and the
// route says which; a placement on a provider the resolver does not have
// fails as a provisioning error naming it; a provider that finds no
// database for the tenant makes it unknown, not a failed creation.
func TestPlacedTenants(t *testing.T) {
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	ctx := t.Context()
	dflt, other := &namedProvider{name: "dflt"}, &namedProvider{name: "other"}
	r := resolver.New(resolver.Config{NegativeTTL: -1, Providers: map[string]resolver.Provisioner{"dflt": dflt, "other": other}}, cat, dflt)
	defer r.Close()

	if err := cat.Place(ctx, "a", "other"); err != nil {
		t.Fatal(err)
	}
	rt, err := r.Resolve(ctx, "a")
	if err != nil || rt.Provider != "other" || other.calls.Load() != 1 || dflt.calls.Load() != 0 {
		t.Fatalf("placed tenant: %v (provider %q), %v; calls other %d, default %d", rt, rt.Provider, err, other.calls.Load(), dflt.calls.Load())
	}
	if rt, err := r.Resolve(ctx, "b"); err != nil || rt.Provider != "dflt" {
		t.Fatalf("unplaced tenant: provider %q, %v", rt.Provider, err)
	}

	if err := cat.Place(ctx, "c", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(ctx, "c"); !errors.Is(err, resolver.ErrProvision) || !strings.Contains(err.Error(), "provider gone") {
		t.Fatalf("placed on a provider the resolver lacks: %v; want ErrProvision naming it", err)
	}

	r2 := resolver.New(resolver.Config{NegativeTTL: -1}, cat, findsNothing{})
	defer r2.Close()
	if _, err := r2.Resolve(ctx, "d"); !errors.Is(err, resolver.ErrUnknownTenant) || !errors.Is(err, provision.ErrTenantNotFound) {
		t.Fatalf("provider found nothing: %v; want ErrUnknownTenant wrapping ErrTenantNotFound", err)
	}
}

// namedSlow is estimatingProvider under another name.
type namedSlow struct {
	estimatingProvider
	name string
}

func (p *namedSlow) Name() string { return p.name }

// A tenant placed on a slow provider is created in the background by
// that provider (57P03 meanwhile), though the default is fast; a tenant
// placed on a fast provider is created at once, though the default is
// slow.
func TestPlacedOnSlowProvider(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	ctx := t.Context()
	fast := &namedProvider{name: "fast"}
	slow := &namedSlow{estimatingProvider: *newSlow(), name: "slow"}
	provs := map[string]resolver.Provisioner{"fast": fast, "slow": slow}

	cfg := bgConfig(nil)
	cfg.Providers = provs
	r := resolver.New(cfg, cat, fast)
	defer r.Close()
	if err := cat.Place(ctx, "big", "slow"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve(ctx, "big"); !errors.Is(err, resolver.ErrCreating) {
		t.Fatalf("placed on the slow provider: %v, want ErrCreating", err)
	}
	if slow.calls.Load() != 1 || fast.calls.Load() != 0 {
		t.Fatalf("calls: slow %d, fast %d; want 1, 0", slow.calls.Load(), fast.calls.Load())
	}
	close(slow.gate)
	var rt resolver.Route
	poll.Until(t, 10*time.Second, "the slow tenant's route", func() bool {
		var err error
		rt, err = r.Resolve(ctx, "big")
		return err == nil
	})
	if rt.Provider != "slow" {
		t.Errorf("route's provider %q, want slow", rt.Provider)
	}

	// The other way round: the default is slow, the placement fast.
	slow2 := &namedSlow{estimatingProvider: *newSlow(), name: "slow"}
	cfg.Providers = map[string]resolver.Provisioner{"fast": fast, "slow": slow2}
	r2 := resolver.New(cfg, cat, slow2)
	defer r2.Close()
	if err := cat.Place(ctx, "small", "fast"); err != nil {
		t.Fatal(err)
	}
	if rt, err := r2.Resolve(ctx, "small"); err != nil || rt.Provider != "fast" {
		t.Fatalf("placed on the fast provider: %v (provider %q), want a route at once", err, rt.Provider)
	}
	if slow2.calls.Load() != 0 {
		t.Fatalf("the slow default was asked %d times", slow2.calls.Load())
	}
	close(slow2.gate)
}
