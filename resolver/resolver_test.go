package resolver_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

var discard = slog.New(slog.DiscardHandler)

func TestViaString(t *testing.T) {
	tests := []struct {
		via  resolver.Via
		want string
	}{
		{resolver.ViaCache, "cache"},
		{resolver.ViaCatalog, "catalog"},
		{resolver.ViaCreated, "created"},
		{0, "Via(0)"},
	}
	for _, tt := range tests {
		if got := tt.via.String(); got != tt.want {
			t.Errorf("Via(%d).String() = %q, want %q", tt.via, got, tt.want)
		}
	}
}

func TestResolveVia(t *testing.T) {
	pgtest.CheckGoroutines(t)
	store := &memStore{m: map[string]provision.Endpoint{"old": {Host: "10.1.1.1", Port: 6432}}}
	p := &fakeProvider{}
	r := resolver.New(resolver.Config{Log: discard}, store, p)
	defer r.Close()

	tests := []struct {
		name, tenant string
		want         resolver.Via
		wantCalls    int32
	}{
		{"in catalog", "old", resolver.ViaCatalog, 0},
		{"cached after catalog", "old", resolver.ViaCache, 0},
		{"new tenant", "acme", resolver.ViaCreated, 1},
		{"cached after create", "acme", resolver.ViaCache, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := r.Resolve(t.Context(), tt.tenant)
			if err != nil {
				t.Fatal(err)
			}
			if rt.Via != tt.want {
				t.Errorf("Via = %v, want %v", rt.Via, tt.want)
			}
			if rt.Host == "" || rt.Port == 0 {
				t.Errorf("route has no address: %v", rt)
			}
			if !r.Cached(tt.tenant) {
				t.Error("not cached after Resolve")
			}
			if got := p.calls.Load(); got != tt.wantCalls {
				t.Errorf("Create calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestResolveConcurrentFirstResolve(t *testing.T) {
	pgtest.CheckGoroutines(t)
	p := &fakeProvider{}
	r := resolver.New(resolver.Config{Log: discard}, &memStore{}, p)
	defer r.Close()

	const n = 100
	routes := make([]resolver.Route, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { routes[i], errs[i] = r.Resolve(t.Context(), "acme") })
	}
	wg.Wait()
	if got := p.calls.Load(); got != 1 {
		t.Errorf("Create called %d times, want 1", got)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("resolve %d: %v", i, errs[i])
		}
		if routes[i].Endpoint != routes[0].Endpoint {
			t.Fatalf("resolve %d got %v, resolve 0 got %v", i, routes[i], routes[0])
		}
	}
}

func TestTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{}
		r := resolver.New(resolver.Config{TTL: time.Minute, Log: discard}, &memStore{}, p)
		defer r.Close()
		if _, err := r.Resolve(t.Context(), "acme"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(59 * time.Second)
		if !r.Cached("acme") {
			t.Fatal("expired before TTL")
		}
		time.Sleep(2 * time.Second)
		if r.Cached("acme") {
			t.Fatal("still cached after TTL")
		}
		rt, err := r.Resolve(t.Context(), "acme")
		if err != nil {
			t.Fatal(err)
		}
		if rt.Via != resolver.ViaCatalog || p.calls.Load() != 1 {
			t.Errorf("after expiry: Via = %v, Create calls = %d; want catalog, 1", rt.Via, p.calls.Load())
		}
	})
}

func TestNegativeTTL(t *testing.T) {
	tests := []struct {
		name        string
		negativeTTL time.Duration
		remembered  time.Duration // how long a failure is served from the cache; 0: not at all
	}{
		{"default", 0, time.Second},
		{"five seconds", 5 * time.Second, 5 * time.Second},
		{"disabled", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &fakeProvider{err: errors.New("quota exceeded")}
				r := resolver.New(resolver.Config{NegativeTTL: tt.negativeTTL, Log: discard}, &memStore{}, p)
				defer r.Close()

				_, err1 := r.Resolve(t.Context(), "acme")
				if !errors.Is(err1, resolver.ErrProvision) {
					t.Fatalf("err = %v, want ErrProvision", err1)
				}
				if r.Cached("acme") {
					t.Error("a failure counts as cached")
				}
				_, err2 := r.Resolve(t.Context(), "acme")
				want := int32(1)
				if tt.remembered == 0 {
					want = 2
				} else if err2 != err1 {
					t.Errorf("remembered error = %v, want %v", err2, err1)
				}
				if got := p.calls.Load(); got != want {
					t.Fatalf("Create calls = %d right after a failure, want %d", got, want)
				}

				time.Sleep(tt.remembered)
				_, _ = r.Resolve(t.Context(), "acme")
				if got := p.calls.Load(); got != want+1 {
					t.Errorf("Create calls = %d after NegativeTTL, want %d", got, want+1)
				}
			})
		})
	}
}

func TestInvalidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{err: errors.New("boom")}
		r := resolver.New(resolver.Config{NegativeTTL: time.Hour, Log: discard}, &memStore{}, p)
		defer r.Close()

		if _, err := r.Resolve(t.Context(), "acme"); err == nil {
			t.Fatal("want error")
		}
		r.Invalidate("acme") // forgets the remembered failure too
		p.err = nil
		rt, err := r.Resolve(t.Context(), "acme")
		if err != nil || rt.Via != resolver.ViaCreated {
			t.Fatalf("after Invalidate: %v, %v; want a created route", rt.Via, err)
		}
		r.Invalidate("acme")
		if r.Cached("acme") {
			t.Fatal("cached after Invalidate")
		}
		if rt, err := r.Resolve(t.Context(), "acme"); err != nil || rt.Via != resolver.ViaCatalog {
			t.Fatalf("after Invalidate: %v, %v; want a catalog route", rt.Via, err)
		}
	})
}

// A fill in flight when Invalidate runs must not cache its result: it may be
// the very route that was invalidated.
func TestInvalidateDuringFill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{gate: make(chan struct{})}
		r := resolver.New(resolver.Config{Log: discard}, &memStore{}, p)
		defer r.Close()

		var rt resolver.Route
		var err error
		var wg sync.WaitGroup
		wg.Go(func() { rt, err = r.Resolve(t.Context(), "acme") })
		synctest.Wait() // the fill waits in Create
		r.Invalidate("acme")
		close(p.gate)
		wg.Wait()
		if err != nil || rt.Via != resolver.ViaCreated {
			t.Fatalf("waiter got %v, %v; want a created route", rt.Via, err)
		}
		if r.Cached("acme") {
			t.Fatal("a fill that began before Invalidate cached its route")
		}
		if rt, err := r.Resolve(t.Context(), "acme"); err != nil || rt.Via != resolver.ViaCatalog || !r.Cached("acme") {
			t.Fatalf("next Resolve: %v, %v, cached %v; want a cached catalog route", rt.Via, err, r.Cached("acme"))
		}
	})
}

func TestCancelledCallerDoesNotFailOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{gate: make(chan struct{})}
		r := resolver.New(resolver.Config{Log: discard}, &memStore{}, p)
		defer r.Close()

		impatient, cancel := context.WithCancel(t.Context())
		var errA, errB error
		var rtB resolver.Route
		var wg sync.WaitGroup
		wg.Go(func() { _, errA = r.Resolve(impatient, "acme") })
		wg.Go(func() { rtB, errB = r.Resolve(t.Context(), "acme") })
		synctest.Wait() // both wait on the one fill, which waits in Create

		cancel()
		synctest.Wait()
		if !errors.Is(errA, context.Canceled) {
			t.Fatalf("cancelled caller got %v, want context.Canceled", errA)
		}
		close(p.gate)
		wg.Wait()
		if errB != nil || rtB.Via != resolver.ViaCreated {
			t.Fatalf("patient caller got %v, %v; want a created route", rtB.Via, errB)
		}
		if p.calls.Load() != 1 || !r.Cached("acme") {
			t.Errorf("Create calls = %d, cached = %v; want 1, true", p.calls.Load(), r.Cached("acme"))
		}
	})
}

// The fill goes on after its only caller gave up, and its route is cached.
func TestFillOutlivesCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{gate: make(chan struct{})}
		r := resolver.New(resolver.Config{Log: discard}, &memStore{}, p)
		defer r.Close()

		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if _, err := r.Resolve(ctx, "acme"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		close(p.gate)
		synctest.Wait()
		if !r.Cached("acme") {
			t.Fatal("abandoned fill did not cache its route")
		}
	})
}

func TestFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{gate: make(chan struct{})} // never opens
		r := resolver.New(resolver.Config{FillTimeout: 10 * time.Second, Log: discard}, &memStore{}, p)
		defer r.Close()

		start := time.Now()
		_, err := r.Resolve(t.Context(), "acme")
		if !errors.Is(err, resolver.ErrProvision) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want ErrProvision wrapping DeadlineExceeded", err)
		}
		if d := time.Since(start); d != 10*time.Second {
			t.Errorf("fill gave up after %v, want 10s", d)
		}
	})
}

func TestClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &fakeProvider{gate: make(chan struct{})} // never opens
		r := resolver.New(resolver.Config{Log: discard}, &memStore{}, p)

		var err error
		var wg sync.WaitGroup
		wg.Go(func() { _, err = r.Resolve(t.Context(), "acme") })
		synctest.Wait()
		r.Close() // cancels the fill and waits for it
		wg.Wait()
		if !errors.Is(err, resolver.ErrClosed) {
			t.Errorf("waiter got %v, want ErrClosed", err)
		}
		if _, err := r.Resolve(t.Context(), "acme"); !errors.Is(err, resolver.ErrClosed) {
			t.Errorf("Resolve after Close: %v, want ErrClosed", err)
		}
		r.Close()
	})
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name  string
		store resolver.Store
		prov  resolver.Provisioner
		want  error
		not   error
	}{
		{"provider fails", &memStore{}, &fakeProvider{err: errors.New("neon: 503 Service Unavailable")},
			resolver.ErrProvision, resolver.ErrCatalog},
		{"provider fails with the caller's deadline", &memStore{}, &fakeProvider{err: context.DeadlineExceeded},
			resolver.ErrProvision, resolver.ErrCatalog},
		{"provider returns no address", &memStore{}, noAddrProvider{},
			resolver.ErrProvision, resolver.ErrCatalog},
		{"catalog down", downStore{}, &fakeProvider{}, resolver.ErrCatalog, resolver.ErrProvision},
		{"catalog down, no provisioning", downStore{}, nil, resolver.ErrCatalog, resolver.ErrUnknownTenant},
		{"unknown tenant, no provisioning", &memStore{}, nil, resolver.ErrUnknownTenant, resolver.ErrCatalog},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			r := resolver.New(resolver.Config{Log: discard}, tt.store, tt.prov)
			defer r.Close()
			rt, err := r.Resolve(t.Context(), "acme")
			if !errors.Is(err, tt.want) || errors.Is(err, tt.not) {
				t.Fatalf("err = %v; want %v, not %v", err, tt.want, tt.not)
			}
			if rt != (resolver.Route{}) {
				t.Errorf("failed Resolve returned a route: %#v", rt.Endpoint.LogValue())
			}
			if msg := err.Error(); strings.Contains(msg, fakePassword) || !strings.Contains(msg, `"acme"`) {
				t.Errorf("error %q leaks the password or lacks the tenant", msg)
			}
		})
	}
}

// noAddrProvider returns an endpoint without host or port (a provider bug).
type noAddrProvider struct{}

func (noAddrProvider) Name() string { return "broken" }

func (noAddrProvider) Create(context.Context, string) (provision.Endpoint, error) {
	return provision.Endpoint{User: "u", Password: fakePassword}, nil
}

func TestCacheSize(t *testing.T) {
	p := &fakeProvider{}
	r := resolver.New(resolver.Config{CacheSize: 2, Log: discard}, &memStore{}, p)
	defer r.Close()
	for _, tenant := range []string{"a", "b", "a", "c"} { // c evicts b, the least recently used
		if _, err := r.Resolve(t.Context(), tenant); err != nil {
			t.Fatal(err)
		}
	}
	for tenant, want := range map[string]bool{"a": true, "b": false, "c": true} {
		if got := r.Cached(tenant); got != want {
			t.Errorf("Cached(%q) = %v, want %v", tenant, got, want)
		}
	}
}

func TestResolveCachedAllocs(t *testing.T) {
	r := resolver.New(resolver.Config{Log: discard}, &memStore{}, &fakeProvider{})
	defer r.Close()
	ctx := t.Context()
	if _, err := r.Resolve(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if rt, err := r.Resolve(ctx, "acme"); err != nil || rt.Via != resolver.ViaCache {
			t.Fatalf("%v, %v", rt.Via, err)
		}
	})
	if allocs != 0 {
		t.Errorf("a cached Resolve allocates %v times, want 0", allocs)
	}
}

// BenchmarkResolveCached measures the hot path: a route served from the LRU.
//
// Intel Xeon (2 vCPU VM), go1.26.8, linux/amd64:
//
//	BenchmarkResolveCached-2           141.5 ns/op   0 B/op   0 allocs/op
//	BenchmarkResolveCachedParallel-2   233.0 ns/op   0 B/op   0 allocs/op
func BenchmarkResolveCached(b *testing.B) {
	r := resolver.New(resolver.Config{Log: discard}, &memStore{}, &fakeProvider{})
	defer r.Close()
	ctx := context.Background()
	if _, err := r.Resolve(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve(ctx, "acme"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveCachedParallel measures the hot path under contention: all
// goroutines share the cache's mutex.
func BenchmarkResolveCachedParallel(b *testing.B) {
	r := resolver.New(resolver.Config{Log: discard}, &memStore{}, &fakeProvider{})
	defer r.Close()
	ctx := context.Background()
	tenants := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, tenant := range tenants {
		if _, err := r.Resolve(ctx, tenant); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := r.Resolve(ctx, tenants[i%len(tenants)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
