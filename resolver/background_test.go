package resolver_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/resolver"
)

// estimatingProvider is fakeProvider that says its creations take ten minutes,
// so resolvers create its tenants in the background.
type estimatingProvider struct{ fakeProvider }

func (*estimatingProvider) CreateEstimate() time.Duration { return 10 * time.Minute }

func newSlow() *estimatingProvider {
	return &estimatingProvider{fakeProvider{gate: make(chan struct{})}}
}

// bgConfig is a resolver configuration for background creations that
// waits a moment for them and remembers failures briefly.
func bgConfig(m *resolver.Metrics) resolver.Config {
	return resolver.Config{Metrics: m, CreateWait: 50 * time.Millisecond, NegativeTTL: 20 * time.Millisecond}
}

// Connects of a tenant a slow provider creates are answered ErrCreating,
// the first after CreateWait, and the provider is asked once; once it is
// done the route resolves.
func TestBackgroundCreate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	p := newSlow()
	m := resolver.NewMetrics(prometheus.NewRegistry())
	r := resolver.New(bgConfig(m), cat, p)
	defer r.Close()
	ctx := t.Context()

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := r.Resolve(ctx, "slow")
			var ce *resolver.CreatingError
			if !errors.As(err, &ce) || !errors.Is(err, resolver.ErrCreating) {
				t.Errorf("Resolve: %v, want a CreatingError", err)
				return
			}
			if n := ce.Minutes(time.Now()); n != 10 {
				t.Errorf("about %d minutes, want 10", n)
			}
		})
	}
	wg.Wait()
	if _, err := r.Ensure(ctx, "slow"); !errors.Is(err, resolver.ErrCreating) {
		t.Fatalf("Ensure during the creation: %v, want ErrCreating", err)
	}
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	if v := testutil.ToFloat64(m.BackgroundCreates); v != 1 {
		t.Fatalf("background_creates_in_flight %v, want 1", v)
	}
	close(p.gate)
	poll.Until(t, 10*time.Second, "the route", func() bool {
		_, err := r.Resolve(ctx, "slow")
		return err == nil
	})
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	if v := testutil.ToFloat64(m.BackgroundCreates); v != 0 {
		t.Fatalf("background_creates_in_flight %v, want 0", v)
	}
}

// Two resolvers on one catalog (two router instances): one creates, the
// other answers ErrCreating meanwhile without asking the provider.
func TestBackgroundCreateTwoInstances(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	p := newSlow()
	r1 := resolver.New(bgConfig(nil), openCatalog(t, pool, key), p)
	defer r1.Close()
	r2 := resolver.New(bgConfig(nil), openCatalog(t, pgtest.NewPool(t, pool.Config().ConnString()), key), p)
	defer r2.Close()
	ctx := t.Context()
	for _, r := range []*resolver.Resolver{r1, r2, r2, r1} {
		if _, err := r.Resolve(ctx, "slow"); !errors.Is(err, resolver.ErrCreating) {
			t.Fatalf("Resolve: %v, want ErrCreating", err)
		}
	}
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	close(p.gate)
	for _, r := range []*resolver.Resolver{r1, r2} {
		poll.Until(t, 10*time.Second, "the route", func() bool {
			_, err := r.Resolve(ctx, "slow")
			return err == nil
		})
	}
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
}

// A failed background creation is reported (ErrCreateFailed) on both
// instances; after NegativeTTL the next resolve creates again.
func TestBackgroundCreateFails(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	p := newSlow()
	p.err = errors.New("InsufficientDBInstanceCapacity")
	close(p.gate)
	cfg := bgConfig(nil)
	cfg.CreateWait = time.Minute // the failure comes long before
	cfg.NegativeTTL = time.Hour
	r1 := resolver.New(cfg, openCatalog(t, pool, key), p)
	defer r1.Close()
	cat2 := openCatalog(t, pgtest.NewPool(t, pool.Config().ConnString()), key)
	cfg.NegativeTTL = 50 * time.Millisecond
	r2 := resolver.New(cfg, cat2, p)
	defer r2.Close()
	ctx := t.Context()
	_, err := r1.Resolve(ctx, "bad")
	if !errors.Is(err, resolver.ErrCreateFailed) || !errors.Is(err, resolver.ErrProvision) {
		t.Fatalf("Resolve: %v, want ErrCreateFailed", err)
	}
	// The other instance reads the failure from the catalog (within its
	// NegativeTTL of it), or retries after it: either way not a second
	// creation before the failure is 50ms old.
	p.err = nil
	poll.Until(t, 10*time.Second, "a new creation after negative_ttl", func() bool {
		_, err := r2.Resolve(ctx, "bad")
		return err == nil
	})
	if n := p.calls.Load(); n != 2 {
		t.Fatalf("Create called %d times, want 2 (the failure, the retry)", n)
	}
	if _, err := r1.Resolve(ctx, "bad"); !errors.Is(err, resolver.ErrCreateFailed) {
		t.Fatalf("r1 within its negative TTL: %v, want the remembered failure", err)
	}
}

// A creation whose creator stopped (Close; as after a crash) is left
// running in the catalog and taken over by another instance once its
// lease has passed.
func TestBackgroundCreateTakeover(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	p := newSlow()
	cfg := bgConfig(nil)
	cfg.CreateLease = 300 * time.Millisecond // the creator's lease counts
	r1 := resolver.New(cfg, openCatalog(t, pool, key), p)
	ctx := t.Context()
	if _, err := r1.Resolve(ctx, "slow"); !errors.Is(err, resolver.ErrCreating) {
		t.Fatalf("Resolve: %v, want ErrCreating", err)
	}
	r1.Close()
	close(p.gate)
	cat2 := openCatalog(t, pgtest.NewPool(t, pool.Config().ConnString()), key)
	r2 := resolver.New(bgConfig(nil), cat2, p)
	defer r2.Close()
	poll.Until(t, 10*time.Second, "the takeover", func() bool {
		_, err := r2.Resolve(ctx, "slow")
		return err == nil
	})
	if n := p.calls.Load(); n != 2 {
		t.Fatalf("Create called %d times, want 2 (the stopped one, the takeover)", n)
	}
	if _, ok, _ := cat2.Creation(ctx, "slow"); ok {
		t.Fatal("the creation row outlived the takeover's finish")
	}
}

// MaxConcurrentCreates counts background creations for their whole run; a
// creation over it is refused after CreateWait rather than queued for
// minutes.
func TestBackgroundCreateSlots(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	p := newSlow()
	cfg := bgConfig(nil)
	cfg.MaxConcurrentCreates = 1
	r := resolver.New(cfg, cat, p)
	defer r.Close()
	ctx := t.Context()
	if _, err := r.Resolve(ctx, "first"); !errors.Is(err, resolver.ErrCreating) {
		t.Fatalf("Resolve first: %v, want ErrCreating", err)
	}
	if _, err := r.Resolve(ctx, "second"); !errors.Is(err, resolver.ErrProvision) || errors.Is(err, resolver.ErrCreating) {
		t.Fatalf("Resolve second over the cap: %v, want ErrProvision (no slot)", err)
	}
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	close(p.gate)
	poll.Until(t, 10*time.Second, "the second creation once the first is done", func() bool {
		_, err := r.Resolve(ctx, "second")
		return err == nil
	})
}
