package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
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
