package resolver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// fullStore refuses every creation as a catalog at its cap does.
type fullStore struct{ openStore }

func (s *fullStore) Ensure(ctx context.Context, tenant, _ string,
	create func(context.Context) (provision.Endpoint, error),
) (provision.Endpoint, bool, error) {
	if ep, ok, _ := s.Lookup(ctx, tenant); ok {
		return ep, false, nil
	}
	return provision.Endpoint{}, false, &provision.LimitError{Setting: provision.LimitMaxTenants, Max: 7}
}

func TestCreateModes(t *testing.T) {
	tests := []struct {
		name         string
		mode         resolver.CreateMode
		resolveErr   error // Resolve of a missing tenant; nil: creates
		ensureErr    error // Ensure of a missing tenant; nil: creates
		refusedLabel string
	}{
		{"auto", resolver.CreateAuto, nil, nil, ""},
		{"zero value is auto", "", nil, nil, ""},
		{"api", resolver.CreateAPI, resolver.ErrTenantNotCreated, nil, "create_api"},
		{"off", resolver.CreateOff, resolver.ErrTenantNotCreated, resolver.ErrCreateOff, "create_off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := resolver.NewMetrics(prometheus.NewPedanticRegistry())
			p := &fakeProvider{}
			r := resolver.New(resolver.Config{Log: discard, Metrics: m, Create: tt.mode}, &openStore{}, p)
			defer r.Close()
			ctx := t.Context()

			_, err := r.Resolve(ctx, "a")
			if !errors.Is(err, tt.resolveErr) || (tt.resolveErr == nil) != (err == nil) {
				t.Fatalf("Resolve: %v, want %v", err, tt.resolveErr)
			}
			if tt.resolveErr != nil && !errors.Is(err, resolver.ErrUnknownTenant) {
				t.Errorf("Resolve: %v does not wrap ErrUnknownTenant", err)
			}
			// The client's failure is remembered, but does not hold Ensure back.
			if tt.resolveErr != nil {
				_, _ = r.Resolve(ctx, "b") // remembered for NegativeTTL
			}
			rt, err := r.Ensure(ctx, "b")
			if !errors.Is(err, tt.ensureErr) || (tt.ensureErr == nil) != (err == nil) {
				t.Fatalf("Ensure: %v, want %v", err, tt.ensureErr)
			}
			if err == nil {
				if rt.Via != resolver.ViaCreated {
					t.Fatalf("Ensure: via %s, want created", rt.Via)
				}
				// Clients then find it; a second Ensure is a cache hit.
				if rt, err := r.Resolve(ctx, "b"); err != nil || rt.Via != resolver.ViaCache {
					t.Fatalf("Resolve after Ensure: %v, %v", rt.Via, err)
				}
				if rt, err := r.Ensure(ctx, "b"); err != nil || rt.Via != resolver.ViaCache {
					t.Fatalf("second Ensure: %v, %v", rt.Via, err)
				}
			} else {
				// The operator's refusal is not what a client is told next.
				if _, err := r.Resolve(ctx, "b"); !errors.Is(err, resolver.ErrTenantNotCreated) {
					t.Fatalf("Resolve after a refused Ensure: %v, want ErrTenantNotCreated", err)
				}
			}
			if tt.refusedLabel != "" {
				if got := testutil.ToFloat64(m.CreatesRefused.WithLabelValues(tt.refusedLabel)); got < 2 {
					t.Errorf("creates_refused_total{reason=%s} = %v, want >= 2", tt.refusedLabel, got)
				}
			}
		})
	}
}

func TestCreateLimitError(t *testing.T) {
	m := resolver.NewMetrics(prometheus.NewPedanticRegistry())
	r := resolver.New(resolver.Config{Log: discard, Metrics: m}, &fullStore{}, &fakeProvider{})
	defer r.Close()
	for _, resolve := range []func(context.Context, string) (resolver.Route, error){r.Resolve, r.Ensure} {
		_, err := resolve(t.Context(), "x")
		var le *provision.LimitError
		if !errors.Is(err, resolver.ErrCreateLimit) || !errors.As(err, &le) || le.Max != 7 || errors.Is(err, resolver.ErrCatalog) {
			t.Fatalf("%v: want ErrCreateLimit with the LimitError, not ErrCatalog", err)
		}
	}
	if got := testutil.ToFloat64(m.CreatesRefused.WithLabelValues("max_tenants")); got != 2 {
		t.Errorf("creates_refused_total{reason=max_tenants} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.CatalogErrors); got != 0 {
		t.Errorf("catalog_errors_total = %v, want 0", got)
	}
}
