package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestMetrics(t *testing.T) {
	pgtest.CheckGoroutines(t)
	reg := prometheus.NewPedanticRegistry()
	m := proxy.NewMetrics(reg)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.Metrics = m })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	finished := func(outcome string) float64 {
		return testutil.ToFloat64(m.ConnectionsFinished.WithLabelValues(outcome))
	}

	tenant := newTenant("metrics")
	for range 2 { // created, then from the cache
		conn := r.connect(t, tenant)
		queryString(t, conn, "SELECT 'hello'")
		if got := testutil.ToFloat64(m.ConnectionsActive); got != 1 {
			t.Errorf("active during a session = %v, want 1", got)
		}
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pgx.Connect(ctx, r.dsn(tenant, "wrong-secret")); pgCode(err) != "28P01" {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := pgx.Connect(ctx, r.dsn("Not-A-Tenant", appSecret)); pgCode(err) != "28000" {
		t.Fatalf("invalid tenant: %v", err)
	}
	c := rawConn(t, r.addr)
	if _, err := c.Write(cancelPacket(1, 2)); err != nil {
		t.Fatal(err)
	}
	_, _ = readAll(c)

	// Blocked: the live session is ended (killed), a new one refused.
	conn := r.connect(t, tenant)
	r.srv.SetBlocked([]string{tenant})
	if _, err := conn.Exec(ctx, "SELECT 1"); pgCode(err) != "57P01" {
		t.Fatalf("session of a blocked tenant: %v, want 57P01", err)
	}
	if _, err := pgx.Connect(ctx, r.dsn(tenant, appSecret)); pgCode(err) != "28000" {
		t.Fatalf("connect to a blocked tenant: %v", err)
	}

	// Connections end (and are counted) just after the client sees the end.
	poll.Until(t, 10*time.Second, "no active connections and one killed", func() bool {
		return testutil.ToFloat64(m.ConnectionsActive) == 0 && finished(proxy.OutcomeKilled) != 0
	})
	for outcome, want := range map[string]float64{
		proxy.OutcomeOK: 2, proxy.OutcomeAuthFailed: 1, proxy.OutcomeInvalidTenant: 1,
		proxy.OutcomeCancel: 1, proxy.OutcomeKilled: 1, proxy.OutcomeBlocked: 1,
	} {
		if got := finished(outcome); got != want {
			t.Errorf("finished{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if got := testutil.ToFloat64(m.ConnectionsAccepted); got != 7 {
		t.Errorf("accepted = %v, want 7", got)
	}
	if got := testutil.ToFloat64(m.CancelRequests.WithLabelValues("unknown")); got != 1 {
		t.Errorf("cancel_requests{unknown} = %v", got)
	}
	if got := testutil.ToFloat64(m.BytesIn); got == 0 {
		t.Error("no bytes counted from clients")
	}
	if got := testutil.ToFloat64(m.BytesOut); got == 0 {
		t.Error("no bytes counted toward clients")
	}
	// Histograms: count the observations of each series.
	counts := map[string]uint64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			if h := mm.GetHistogram(); h != nil {
				name := mf.GetName()
				for _, l := range mm.GetLabel() {
					name += "{" + l.GetValue() + "}"
				}
				counts[name] = h.GetSampleCount()
			}
		}
	}
	for name, want := range map[string]uint64{
		"pgtenant_proxy_resolve_seconds{created}": 1,
		"pgtenant_proxy_resolve_seconds{cache}":   2, // 2nd connect, the session ended by the block
		"pgtenant_proxy_upstream_connect_seconds": 3,
		"pgtenant_proxy_client_auth_seconds":      4, // the three routed + the blocked one
		"pgtenant_proxy_handshake_seconds":        7,
	} {
		if got := counts[name]; got != want {
			t.Errorf("%s count = %d, want %d", name, got, want)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
