package bench_test

import (
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestRouterColdAndSteady drives the real router in-process with the
// {tenant} template, next to the cluster directly: cold creates new
// tenants and measures their first query; warm-up creates the steady
// tenants before they are measured; a wrong app secret counts 28P01.
func TestRouterColdAndSteady(t *testing.T) {
	pgtest.CheckGoroutines(t)
	rt := startRouter(t)
	direct := directDSN(t)
	prefix := uniquePrefix(t)
	rep := runBench(t, bench.Config{
		Targets: []bench.Target{
			{Label: "direct", DSN: direct},
			{Label: "router", DSN: rt.dsn(routerSecret)},
			{Label: "bad-secret", DSN: rt.dsn("wrong")},
		},
		Scenarios:    []bench.Scenario{bench.Cold, bench.Steady},
		Tenants:      2,
		NewTenants:   2,
		TenantPrefix: prefix,
		Duration:     400 * time.Millisecond,
		Rounds:       2,
	})
	if got := rt.creates.Load(); got != 2+2 {
		t.Errorf("router created %d tenants, want 4 (2 cold, 2 steady at warm-up)", got)
	}

	cold := scenario(t, rep, 0, bench.Cold)
	if cold.Tenants != 2 || cold.Rounds != 2 || cold.DurationMs != 0 {
		t.Errorf("cold parameters: %+v", cold)
	}
	for _, label := range []string{"direct", "router"} {
		r := result(t, cold, label)
		checkSane(t, r)
		if r.TTFQ == nil || r.TTFQ.Count != 2 || r.Connects != 2 || r.Queries != 2 || r.ErrorsTotal != 0 {
			t.Fatalf("%s cold: %+v (ttfq %+v)", label, r, r.TTFQ)
		}
		if r.TTFQ.P50Ms <= 0 || r.TTFQ.P50Ms > r.TTFQ.MaxMs || r.TTFQ.P50Ms < r.ConnectP50Ms || r.ConnectionsPerSec <= 0 {
			t.Errorf("%s cold: ttfq %+v, connect p50 %v, %v conns/s", label, r.TTFQ, r.ConnectP50Ms, r.ConnectionsPerSec)
		}
	}
	rc, dc := result(t, cold, "router"), result(t, cold, "direct")
	if got, want := rc.Ratio["ttfq_p50_ms"], rc.TTFQ.P50Ms/dc.TTFQ.P50Ms; got != want {
		t.Errorf("router ttfq ratio %v, want %v", got, want)
	}
	// Creating a database takes far longer than connecting to one.
	if rc.TTFQ.P50Ms < dc.TTFQ.P50Ms {
		t.Logf("cold: router first query p50 %v ms < direct %v ms: unexpected, but not an error", rc.TTFQ.P50Ms, dc.TTFQ.P50Ms)
	}
	if bad := result(t, cold, "bad-secret"); bad.Errors["28P01"] != 2 || bad.TTFQ.Count != 0 {
		t.Errorf("bad secret cold: errors %v, ttfq %+v", bad.Errors, bad.TTFQ)
	}

	steady := scenario(t, rep, 1, bench.Steady)
	for _, label := range []string{"direct", "router"} {
		r := result(t, steady, label)
		checkSane(t, r)
		if r.Connects != 4 || r.HeldConns != 2 || r.Queries == 0 || r.ErrorsTotal != 0 {
			t.Errorf("%s steady: %d connects, %d held, %d queries, errors %v", label, r.Connects, r.HeldConns, r.Queries, r.Errors)
		}
	}
	if bad := result(t, steady, "bad-secret"); bad.Errors["28P01"] == 0 || bad.Queries != 0 {
		t.Errorf("bad secret steady: errors %v, %d queries", bad.Errors, bad.Queries)
	}
}
