package router

import (
	"fmt"
	"slices"

	"github.com/pgtenant/pgtenant/proxy"
)

// validateLimits checks limits, keepalive and blocked_tenants: rules of the
// file (no negative values; a backoff threshold needs its periods) that the
// proxy, where zero or negative means off, does not have.
func (fc *Config) validateLimits() []error {
	var errs []error
	l := &fc.Limits
	for name, v := range map[string]int{
		"limits.max_connections":                    l.MaxConnections,
		"limits.max_connections_per_tenant":         l.MaxConnectionsPerTenant,
		"limits.max_connections_per_tenant_cluster": l.MaxConnectionsPerTenantCluster,
		"limits.max_handshakes":                     l.MaxHandshakes,
		"limits.max_concurrent_creates":             l.MaxConcurrentCreates,
		"limits.auth_backoff.threshold":             l.AuthBackoff.Threshold,
		"limits.cancel_rate":                        l.CancelRate,
		"limits.cancel_burst":                       l.CancelBurst,
		"keepalive.count":                           fc.KeepAlive.Count,
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative (0: no cap / off)", name, v))
		}
	}
	if l.MaxConnectionsPerTenantCluster > 0 && !fc.Cluster.On() {
		errs = append(errs, fmt.Errorf("limits.max_connections_per_tenant_cluster: needs the cluster on (cluster.peer_listen), "+
			"which tells each instance how many live instances share the cap; on a single instance use limits.max_connections_per_tenant"))
	}
	b := l.AuthBackoff
	if l.IdleTimeout < 0 || b.Initial < 0 || b.Max < 0 || b.Window < 0 || fc.KeepAlive.Idle < 0 || fc.KeepAlive.Interval < 0 {
		errs = append(errs, fmt.Errorf("limits / keepalive: durations must not be negative"))
	}
	if b.Threshold > 0 && (b.Initial == 0 || b.Max < b.Initial || b.Window == 0) {
		errs = append(errs, fmt.Errorf("limits.auth_backoff: with a threshold, initial and window must be set and max must be at least initial (%s, %s)", b.Initial, b.Max))
	}
	if fc.KeepAlive.Idle > 0 && (fc.KeepAlive.Interval == 0 || fc.KeepAlive.Count == 0) {
		errs = append(errs, fmt.Errorf("keepalive: interval and count must be set when idle is"))
	}
	if tc, err := fc.TenantConfig(); err == nil { // a bad pattern is reported once, by Validate
		for _, t := range fc.BlockedTenants {
			if !tc.Valid(t) {
				errs = append(errs, fmt.Errorf("blocked_tenants: %q is not a valid tenant ID (want %s)", t, tc.Rule()))
			}
		}
	}
	return errs
}

// ProxyLimits maps limits to the proxy's (Server.SetLimits on reload).
func (fc *Config) ProxyLimits() proxy.Limits {
	l := fc.Limits
	return proxy.Limits{
		MaxConnections:          l.MaxConnections,
		MaxConnectionsPerTenant: l.MaxConnectionsPerTenant,
		MaxHandshakes:           l.MaxHandshakes,
		IdleTimeout:             l.IdleTimeout,
		CancelRate:              l.CancelRate,
		CancelBurst:             l.CancelBurst,
		AuthBackoff: proxy.AuthBackoff{
			Threshold: l.AuthBackoff.Threshold,
			Initial:   l.AuthBackoff.Initial,
			Max:       l.AuthBackoff.Max,
			Window:    l.AuthBackoff.Window,
		},
	}
}

// clusterLimits is ProxyLimits with this instance's share of
// limits.max_connections_per_tenant_cluster, the cap split over the live
// instances (their IDs, as the registry last listed them; self is counted
// even when its entry was missing from that list). The cap is split, not
// leased per connection, so that admitting a client never waits for the
// catalog; the price: a load balancer that sends one tenant's clients
// mostly to one instance meets that instance's share before the cap, and
// after an instance joins or leaves the shares follow at the next
// heartbeat (an instance killed: after cluster.expire). The remainder goes
// to the lowest IDs, so the shares add up to the cap exactly, unless the
// cap is below the number of instances: each admits at least one.
func (fc *Config) clusterLimits(live []uint8, self uint8) proxy.Limits {
	l := fc.ProxyLimits()
	total := fc.Limits.MaxConnectionsPerTenantCluster
	if total <= 0 {
		return l
	}
	ids := slices.Clone(live)
	if !slices.Contains(ids, self) {
		ids = append(ids, self)
	}
	slices.Sort(ids)
	rank, _ := slices.BinarySearch(ids, self)
	share := total / len(ids)
	if rank < total%len(ids) {
		share++
	}
	share = max(share, 1)
	if l.MaxConnectionsPerTenant <= 0 || share < l.MaxConnectionsPerTenant {
		l.MaxConnectionsPerTenant = share
		l.PerTenantSource = fmt.Sprintf("this instance's share of limits.max_connections_per_tenant_cluster %d over %d live instances", total, len(ids))
	}
	return l
}

// KeepAliveConfig maps keepalive to the proxy's; idle 0 turns keepalives off.
func (fc *Config) KeepAliveConfig() proxy.KeepAlive {
	k := proxy.KeepAlive{Idle: fc.KeepAlive.Idle, Interval: fc.KeepAlive.Interval, Count: fc.KeepAlive.Count}
	if k.Idle == 0 {
		k.Idle = -1
	}
	return k
}
