package resolver_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// slowProvider takes a second per Create (virtual time under synctest) and
// records how many ran at once.
type slowProvider struct {
	inFlight, peak, calls atomic.Int32
}

func (p *slowProvider) Name() string { return "slow" }

func (p *slowProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.calls.Add(1)
	n := p.inFlight.Add(1)
	defer p.inFlight.Add(-1)
	for {
		m := p.peak.Load()
		if n <= m || p.peak.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return provision.Endpoint{}, ctx.Err()
	}
	return provision.Endpoint{Host: "10.0.0.1", Port: 5432, Database: tenant, User: tenant, Password: "pw"}, nil
}

// openStore is a Store that, unlike memStore, does not serialise creations
// of different tenants (as the catalog's per-tenant lock does not).
type openStore struct {
	mu sync.Mutex
	m  map[string]provision.Endpoint
}

func (s *openStore) Lookup(_ context.Context, tenant string) (provision.Endpoint, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep, ok := s.m[tenant]
	return ep, ok, nil
}

func (s *openStore) Ensure(ctx context.Context, tenant, _ string,
	create func(context.Context) (provision.Endpoint, error),
) (provision.Endpoint, bool, error) {
	if ep, ok, _ := s.Lookup(ctx, tenant); ok {
		return ep, false, nil
	}
	ep, err := create(ctx)
	if err != nil {
		return provision.Endpoint{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]provision.Endpoint)
	}
	s.m[tenant] = ep
	return ep, true, nil
}

// resolveAll resolves tenants concurrently and returns their errors.
func resolveAll(r *resolver.Resolver, tenants ...string) []error {
	errs := make([]error, len(tenants))
	var wg sync.WaitGroup
	for i, t := range tenants {
		wg.Go(func() { _, errs[i] = r.Resolve(context.Background(), t) })
	}
	wg.Wait()
	return errs
}

func TestMaxConcurrentCreates(t *testing.T) {
	t.Run("creations are serialised", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &slowProvider{}
			r := resolver.New(resolver.Config{MaxConcurrentCreates: 1, Log: discard}, &openStore{}, p)
			defer r.Close()
			start := time.Now()
			for _, err := range resolveAll(r, "a", "b", "c") {
				if err != nil {
					t.Fatal(err)
				}
			}
			if got := p.peak.Load(); got != 1 {
				t.Errorf("peak concurrent creates = %d, want 1", got)
			}
			if d := time.Since(start); d != 3*time.Second {
				t.Errorf("three 1s creations took %s, want 3s (one at a time)", d)
			}
			// A tenant the store has does not wait for a slot.
			if _, err := r.Resolve(t.Context(), "a"); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("no cap", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &slowProvider{}
			r := resolver.New(resolver.Config{Log: discard}, &openStore{}, p)
			defer r.Close()
			start := time.Now()
			resolveAll(r, "a", "b", "c")
			if got, d := p.peak.Load(), time.Since(start); got != 3 || d != time.Second {
				t.Errorf("peak %d in %s, want 3 in 1s", got, d)
			}
		})
	})
	t.Run("raised at runtime", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &slowProvider{}
			r := resolver.New(resolver.Config{MaxConcurrentCreates: 1, Log: discard}, &openStore{}, p)
			defer r.Close()
			done := make(chan []error)
			go func() { done <- resolveAll(r, "a", "b", "c", "d") }()
			synctest.Wait() // one creating, three waiting
			if got := p.inFlight.Load(); got != 1 {
				t.Fatalf("in flight %d, want 1", got)
			}
			r.SetMaxConcurrentCreates(4)
			synctest.Wait()
			if got := p.inFlight.Load(); got != 4 {
				t.Fatalf("in flight after raising the cap: %d, want 4", got)
			}
			for _, err := range <-done {
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	})
	t.Run("waiting is bounded by the fill budget and the caller", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &slowProvider{}
			r := resolver.New(resolver.Config{MaxConcurrentCreates: 1, FillTimeout: 1500 * time.Millisecond, Log: discard}, &openStore{}, p)
			defer r.Close()
			go func() { _, _ = r.Resolve(context.Background(), "first") }()
			synctest.Wait()

			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if _, err := r.Resolve(ctx, "impatient"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("caller with a 200ms deadline: %v", err)
			}
			// Its fill still waits; it too gives up within its budget.
			start := time.Now()
			_, err := r.Resolve(context.Background(), "patient")
			if !errors.Is(err, resolver.ErrProvision) || time.Since(start) > 1500*time.Millisecond {
				t.Fatalf("after %s: %v; want ErrProvision within the fill timeout", time.Since(start), err)
			}
			if got := p.peak.Load(); got != 1 {
				t.Errorf("peak %d, want 1", got)
			}
		})
	})
}
