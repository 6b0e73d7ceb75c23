package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

// metric is the value of the sample of name whose labels include label
// ("state=idle", or "" for none); for a histogram its sample count. -1:
// no such sample.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" {
				k, v, _ := strings.Cut(label, "=")
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == k && l.GetValue() == v
				}
				if !found {
					continue
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func open(t *testing.T, r *router.Router, tenant string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
}

// With pool.mode session the router makes a Manager and its metrics
// follow it: reuse, a wait that was served (histogram), a queue timeout
// (53300); the Manager is closed after the drain (no goroutine left).
func TestPoolMetrics(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, _ := start(t, func(c *router.Config) {
		c.Pool.Mode = router.PoolModeSession
		c.Pool.MaxServerConnections = 1
		c.Pool.QueueTimeout = 2 * time.Second
	})
	reg := r.Registry()
	if r.Pool() == nil || r.PoolMode() != "session" {
		t.Fatalf("Pool() = %v, PoolMode() = %q", r.Pool(), r.PoolMode())
	}
	ctx := context.Background()
	a, err := open(t, r, "pm")
	if err != nil {
		t.Fatal(err)
	}
	if got := metric(t, reg, "pgtenant_pool_servers", "state=active"); got != 1 {
		t.Fatalf("active servers with one client: %v", got)
	}

	// A second client queues for the one connection, and is served when
	// the first leaves.
	type result struct {
		c   *pgx.Conn
		err error
	}
	bc := make(chan result, 1)
	go func() { c, err := open(t, r, "pm"); bc <- result{c, err} }()
	poll.Until(t, 10*time.Second, "a waiting client", func() bool { return metric(t, reg, "pgtenant_pool_clients_waiting", "") == 1 })
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b := <-bc
	if b.err != nil {
		t.Fatalf("queued client: %v", b.err)
	}
	if got := metric(t, reg, "pgtenant_pool_wait_seconds", ""); got != 1 {
		t.Fatalf("wait histogram count %v, want 1", got)
	}
	if got := metric(t, reg, "pgtenant_pool_servers_opened_total", ""); got != 1 {
		t.Fatalf("opened %v server connections, want 1 (reused)", got)
	}

	// A third times out while the second holds it.
	if _, err := open(t, r, "pm"); sqlState(err) != "53300" {
		t.Fatalf("client over a full budget: %v, want 53300", err)
	}
	if got := metric(t, reg, "pgtenant_pool_queue_timeouts_total", ""); got != 1 {
		t.Fatalf("queue timeouts %v, want 1", got)
	}
	if err := b.c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the connection back idle", func() bool {
		return metric(t, reg, "pgtenant_pool_servers", "state=idle") == 1 && metric(t, reg, "pgtenant_pool_servers", "state=active") == 0
	})
	for _, name := range []string{"pgtenant_pool_servers_closed_total", "pgtenant_pool_evictions_total"} {
		if got := metric(t, reg, name, ""); got != 0 {
			t.Errorf("%s = %v, want 0", name, got)
		}
	}
	if got := metric(t, reg, "pgtenant_pool_servers", "state=opening"); got != 0 {
		t.Errorf("opening = %v", got)
	}
}

// Off (the default), there is no Manager and no pool metrics.
func TestPoolOff(t *testing.T) {
	r, _ := start(t, nil)
	if r.Pool() != nil || r.PoolMode() != "off" {
		t.Fatalf("Pool() = %v, PoolMode() = %q", r.Pool(), r.PoolMode())
	}
	if got := metric(t, r.Registry(), "pgtenant_pool_clients_waiting", ""); got != -1 {
		t.Fatalf("pool metric with pooling off: %v", got)
	}
}
