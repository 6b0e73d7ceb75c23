package resolver_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// memStore is an in-memory resolver.Store standing in for *catalog.Catalog.
type memStore struct {
	mu sync.Mutex // held across create, like the catalog's per-tenant lock
	m  map[string]provision.Endpoint
}

func (s *memStore) Lookup(_ context.Context, tenant string) (provision.Endpoint, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.m[tenant]
	return ep, ok, nil
}

func (s *memStore) Ensure(ctx context.Context, tenant, _ string,
	create func(context.Context) (provision.Endpoint, error),
) (provision.Endpoint, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ep, ok := s.m[tenant]; ok {
		return ep, false, nil
	}
	ep, err := create(ctx)
	if err != nil {
		return provision.Endpoint{}, false, err
	}
	if s.m == nil {
		s.m = make(map[string]provision.Endpoint)
	}
	s.m[tenant] = ep
	return ep, true, nil
}

// dbPerTenant is a resolver.Provisioner that "creates" a database per tenant.
type dbPerTenant struct{}

func (dbPerTenant) Name() string { return "example" }

func (dbPerTenant) Create(_ context.Context, tenant string) (provision.Endpoint, error) {
	return provision.Endpoint{
		Host: "10.0.0.7", Port: 5432, Database: "t_" + tenant,
		User: tenant, Password: "s3cret", ProviderID: "t_" + tenant,
	}, nil
}

func ExampleResolver() {
	// In production the store is a *catalog.Catalog (see catalog.Open) and
	// the provisioner a provision.Provider.
	r := resolver.New(resolver.Config{TTL: time.Minute}, &memStore{}, dbPerTenant{})
	defer r.Close()
	ctx := context.Background()

	for range 2 {
		rt, err := r.Resolve(ctx, "acme")
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(rt.Via, rt) // a Route prints without its password
	}

	r.Invalidate("acme") // e.g. the upstream refused the route's credentials
	fmt.Println("cached:", r.Cached("acme"))
	rt, _ := r.Resolve(ctx, "acme")
	fmt.Println(rt.Via, rt.Addr(), rt.Database)
	// Output:
	// created postgres://acme:xxxxx@10.0.0.7:5432/t_acme
	// cache postgres://acme:xxxxx@10.0.0.7:5432/t_acme
	// cached: false
	// catalog 10.0.0.7:5432 t_acme
}
