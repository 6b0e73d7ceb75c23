package resolver_test

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/resolver"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := resolver.NewMetrics(reg)
	p := &fakeProvider{}
	r := resolver.New(resolver.Config{CacheSize: 2, Log: discard, Metrics: m}, &memStore{}, p)
	defer r.Close()
	for _, tenant := range []string{"a", "a", "b", "c", "a"} { // c evicts a; a comes back
		if _, err := r.Resolve(t.Context(), tenant); err != nil {
			t.Fatal(err)
		}
	}
	failing := &fakeProvider{err: errors.New("quota exceeded")}
	rf := resolver.New(resolver.Config{Log: discard, Metrics: m}, &memStore{}, failing)
	defer rf.Close()
	for range 2 { // the second one is answered by the negative cache
		if _, err := rf.Resolve(t.Context(), "broken"); !errors.Is(err, resolver.ErrProvision) {
			t.Fatalf("Resolve: %v, want ErrProvision", err)
		}
	}
	rc := resolver.New(resolver.Config{Log: discard, Metrics: m}, downStore{}, p)
	defer rc.Close()
	if _, err := rc.Resolve(t.Context(), "x"); !errors.Is(err, resolver.ErrCatalog) {
		t.Fatalf("Resolve: %v, want ErrCatalog", err)
	}

	for name, tt := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"hits":               {m.CacheHits, 1},
		"misses":             {m.CacheMisses, 4 + 1 + 1},
		"negative hits":      {m.CacheNegativeHits, 1},
		"evictions":          {m.CacheEvictions, 2}, // c evicts a, a evicts b
		"provisions":         {m.Provisions, 3 + 1}, // a again comes from the store
		"provision failures": {m.ProvisionFailures, 1},
		"catalog errors":     {m.CatalogErrors, 1},
	} {
		if got := testutil.ToFloat64(tt.c); got != tt.want {
			t.Errorf("%s = %v, want %v", name, got, tt.want)
		}
	}
	if n := testutil.CollectAndCount(reg, "pgtenant_resolver_provision_seconds"); n != 1 {
		t.Errorf("provision histogram: %d series", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	var nilMetrics *resolver.Metrics // records nothing, must not panic
	rn := resolver.New(resolver.Config{Log: discard, Metrics: nilMetrics}, &memStore{}, p)
	defer rn.Close()
	if _, err := rn.Resolve(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
}
