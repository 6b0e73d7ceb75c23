package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

func TestClusterLimitsShares(t *testing.T) {
	for _, c := range []struct {
		total, perTenant int
		live             []uint8
		self             uint8
		want             int
	}{
		{total: 0, perTenant: 7, live: []uint8{1, 2}, self: 1, want: 7},     // off
		{total: 10, live: []uint8{1}, self: 1, want: 10},                    // alone
		{total: 10, live: []uint8{1, 2, 3}, self: 1, want: 4},               // the remainder to the lowest IDs
		{total: 10, live: []uint8{1, 2, 3}, self: 2, want: 3},               //
		{total: 10, live: []uint8{3, 1, 2}, self: 3, want: 3},               // in any order
		{total: 10, live: []uint8{1, 2}, self: 5, want: 3},                  // self not listed yet: counted
		{total: 2, live: []uint8{1, 2, 3}, self: 3, want: 1},                // at least one each
		{total: 10, perTenant: 2, live: []uint8{1, 2}, self: 1, want: 2},    // the per-instance cap is lower
		{total: 10, perTenant: 9, live: []uint8{1, 2, 4}, self: 4, want: 3}, // the share is lower
	} {
		var cfg router.Config
		cfg.Limits.MaxConnectionsPerTenantCluster = c.total
		cfg.Limits.MaxConnectionsPerTenant = c.perTenant
		if got := cfg.ClusterLimits(c.live, c.self).MaxConnectionsPerTenant; got != c.want {
			t.Errorf("%d over %v, self %d, per tenant %d: share %d, want %d", c.total, c.live, c.self, c.perTenant, got, c.want)
		}
	}
	// The shares add up to the cap.
	for total := 3; total < 20; total++ {
		var cfg router.Config
		cfg.Limits.MaxConnectionsPerTenantCluster = total
		sum := 0
		for _, self := range []uint8{7, 2, 9} {
			sum += cfg.ClusterLimits([]uint8{2, 7, 9}, self).MaxConnectionsPerTenant
		}
		if sum != total {
			t.Errorf("cap %d: shares add up to %d", total, sum)
		}
	}
}

// A cluster-wide per-tenant cap of 3 over two instances: 2 and 1; when
// one dies, the other takes the whole cap once its entry expired.
func TestClusterTenantCap(t *testing.T) {
	pgtest.CheckGoroutines(t)
	capped := func(base *router.Config, id router.InstanceID) func(*router.Config) {
		return func(c *router.Config) {
			member(base, id)(c)
			c.Limits.MaxConnectionsPerTenantCluster = 3
		}
	}
	r1, cfg := start(t, capped(nil, 1))
	r2, _ := start(t, capped(&cfg, 2))
	for _, r := range []*router.Router{r1, r2} {
		poll.Until(t, 10*time.Second, "both instances to see the fleet", func() bool {
			return metric(t, r.Registry(), "pgtenant_cluster_instances", "") == 2
		})
	}
	ctx := context.Background()
	open := func(r *router.Router) (*pgx.Conn, error) {
		conn, err := pgx.Connect(ctx, "postgres://capped:router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
		if err == nil {
			t.Cleanup(func() { _ = conn.Close(context.Background()) })
		}
		return conn, err
	}
	refused := func(r *router.Router, share int) {
		t.Helper()
		_, err := open(r)
		if sqlState(err) != "53300" {
			t.Fatalf("connection over the share %d: %v, want 53300", share, err)
		}
		for _, want := range []string{"limits.max_connections_per_tenant_cluster 3 over 2 live instances", "limit " + string(rune('0'+share))} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal does not say %q: %v", want, err)
			}
		}
	}
	for range 2 {
		if _, err := open(r1); err != nil {
			t.Fatal(err)
		}
	}
	refused(r1, 2)
	if _, err := open(r2); err != nil {
		t.Fatal(err)
	}
	refused(r2, 1)

	r2.Crash()
	poll.Until(t, 10*time.Second, "instance 1 to take the whole cap", func() bool {
		conn, err := open(r1)
		if err != nil && sqlState(err) != "53300" {
			t.Fatal(err)
		}
		return conn != nil
	})
	if _, err := open(r1); sqlState(err) != "53300" {
		t.Fatalf("a fourth connection: %v, want 53300", err)
	}
}
