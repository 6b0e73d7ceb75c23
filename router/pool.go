package router

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
)

// Values of pool.mode.
const (
	PoolModeOff         = "off"
	PoolModeSession     = string(proxy.PoolSession)
	PoolModeTransaction = string(proxy.PoolTransaction)
)

// PoolSettings is the pool section: connection pooling in the proxy
// (package pool holds the server connections). Every key needs a restart:
// the Manager and the proxy's mode are fixed when the router starts.
type PoolSettings struct {
	Mode                 string        `yaml:"mode"`
	MaxServerConnections int           `yaml:"max_server_connections"`
	MinPerTenant         int           `yaml:"min_per_tenant"`
	MaxPerTenant         int           `yaml:"max_per_tenant"`
	QueueTimeout         time.Duration `yaml:"queue_timeout"`
	IdleTimeout          time.Duration `yaml:"idle_timeout"`
	ServerLifetime       time.Duration `yaml:"server_lifetime"`
	ServerResetQuery     string        `yaml:"server_reset_query"`
	Turn                 time.Duration `yaml:"turn"`
}

func defaultPoolSettings() PoolSettings {
	return PoolSettings{
		Mode:                 PoolModeOff,
		MaxServerConnections: pool.DefaultMaxServerConnections,
		QueueTimeout:         pool.DefaultQueueTimeout,
		IdleTimeout:          pool.DefaultIdleTimeout,
		ServerResetQuery:     pool.DefaultResetQuery,
		Turn:                 pool.DefaultTurn,
	}
}

// On reports whether pooling is on (mode is session or transaction).
func (p *PoolSettings) On() bool { return p.Mode != PoolModeOff }

// validate checks the section. Zero values the pool package would turn
// into its defaults are refused where the file has an explicit default, so
// that "0" never silently means "80" or "30s".
func (p *PoolSettings) validate() []error {
	var errs []error
	switch p.Mode {
	case PoolModeOff, PoolModeSession, PoolModeTransaction:
	default:
		errs = append(errs, fmt.Errorf("pool.mode: %q is not off, session or transaction", p.Mode))
	}
	if p.MaxServerConnections < 1 {
		errs = append(errs, fmt.Errorf("pool.max_server_connections: %d: want at least 1 (keep it below the upstream's max_connections)", p.MaxServerConnections))
	}
	if p.MinPerTenant < 0 {
		errs = append(errs, fmt.Errorf("pool.min_per_tenant: %d is negative (0: no floor)", p.MinPerTenant))
	}
	if p.MaxPerTenant < 0 {
		errs = append(errs, fmt.Errorf("pool.max_per_tenant: %d is negative (0: the whole max_server_connections)", p.MaxPerTenant))
	}
	if p.MaxServerConnections >= 1 && p.MaxPerTenant > p.MaxServerConnections {
		errs = append(errs, fmt.Errorf("pool.max_per_tenant: %d is more than pool.max_server_connections (%d)", p.MaxPerTenant, p.MaxServerConnections))
	}
	switch {
	case p.MaxPerTenant > 0 && p.MinPerTenant > p.MaxPerTenant:
		errs = append(errs, fmt.Errorf("pool.min_per_tenant: %d is more than pool.max_per_tenant (%d)", p.MinPerTenant, p.MaxPerTenant))
	case p.MaxServerConnections >= 1 && p.MinPerTenant > p.MaxServerConnections:
		errs = append(errs, fmt.Errorf("pool.min_per_tenant: %d is more than pool.max_server_connections (%d)", p.MinPerTenant, p.MaxServerConnections))
	}
	if p.QueueTimeout <= 0 {
		errs = append(errs, fmt.Errorf("pool.queue_timeout: %s: want a positive duration", p.QueueTimeout))
	}
	if p.IdleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("pool.idle_timeout: %s: want a positive duration", p.IdleTimeout))
	}
	if p.Turn < 0 {
		errs = append(errs, fmt.Errorf("pool.turn: %s is negative (0: no turns, a freed connection goes round the waiting tenants)", p.Turn))
	}
	if p.ServerLifetime < 0 {
		errs = append(errs, fmt.Errorf("pool.server_lifetime: %s is negative (0: no limit)", p.ServerLifetime))
	}
	// A transaction-mode router still serves clients that ask for session
	// mode (options=-c pgtenant.pool_mode=session), so the reset query is
	// needed whenever pooling is on.
	if p.On() && strings.TrimSpace(p.ServerResetQuery) == "" {
		errs = append(errs, fmt.Errorf("pool.server_reset_query: empty: session pooling needs it to clean a server connection for the next client (default %q)", pool.DefaultResetQuery))
	}
	return errs
}

// ManagerConfig maps the section to the pool package's Config; onWait
// (may be nil) becomes its OnWait hook.
func (p *PoolSettings) ManagerConfig(onWait func(time.Duration)) pool.Config {
	return pool.Config{
		MaxServerConnections: p.MaxServerConnections,
		MinPerTenant:         p.MinPerTenant,
		MaxPerTenant:         p.MaxPerTenant,
		QueueTimeout:         p.QueueTimeout,
		IdleTimeout:          p.IdleTimeout,
		MaxLifetime:          p.ServerLifetime,
		Turn:                 turn(p.Turn),
		OnWait:               onWait,
	}
}

// turn maps pool.turn, where 0 means no turns, to pool.Config.Turn, where
// that is a negative value.
func turn(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// ProxyConfig maps the section to the proxy's PoolConfig, with m as its
// Manager (nil when mode is off).
func (p *PoolSettings) ProxyConfig(m *pool.Manager) proxy.PoolConfig {
	if !p.On() {
		return proxy.PoolConfig{}
	}
	return proxy.PoolConfig{Mode: proxy.PoolMode(p.Mode), Manager: m, ResetQuery: p.ServerResetQuery}
}

// poolMetrics exposes a pool.Manager's numbers as Prometheus metrics. No
// tenant labels: a router serves thousands of tenants, and per-tenant
// numbers are GET /v1/pools's.
type poolMetrics struct {
	mgr  *pool.Manager // set before the collector is registered
	wait prometheus.Histogram

	servers, waiting                         *prometheus.Desc
	opened, closed, evictions, queueTimeouts *prometheus.Desc
}

func newPoolMetrics() *poolMetrics {
	return &poolMetrics{
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgtenant_pool_wait_seconds",
			Help:    "How long clients that queued for a pooled server connection waited before they got one (not those that timed out).",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
		}),
		servers: prometheus.NewDesc("pgtenant_pool_servers",
			"Pooled upstream server connections by state: active (lent to a client), idle (kept for reuse), opening (being logged in).",
			[]string{"state"}, nil),
		waiting: prometheus.NewDesc("pgtenant_pool_clients_waiting",
			"Clients queued for a pooled server connection (budget or per-tenant ceiling full).", nil, nil),
		opened: prometheus.NewDesc("pgtenant_pool_servers_opened_total",
			"Pooled upstream server connections opened.", nil, nil),
		closed: prometheus.NewDesc("pgtenant_pool_servers_closed_total",
			"Pooled upstream server connections closed, for any reason.", nil, nil),
		evictions: prometheus.NewDesc("pgtenant_pool_evictions_total",
			"Idle server connections closed to make room for another pool on the same upstream.", nil, nil),
		queueTimeouts: prometheus.NewDesc("pgtenant_pool_queue_timeouts_total",
			"Clients refused (53300) after waiting pool.queue_timeout for a server connection.", nil, nil),
	}
}

// observeWait is the Manager's OnWait hook.
func (pm *poolMetrics) observeWait(d time.Duration) { pm.wait.Observe(d.Seconds()) }

// Describe implements prometheus.Collector.
func (pm *poolMetrics) Describe(ch chan<- *prometheus.Desc) {
	pm.wait.Describe(ch)
	for _, d := range []*prometheus.Desc{pm.servers, pm.waiting, pm.opened, pm.closed, pm.evictions, pm.queueTimeouts} {
		ch <- d
	}
}

// Collect implements prometheus.Collector, reading the Manager's budgets
// at scrape time.
func (pm *poolMetrics) Collect(ch chan<- prometheus.Metric) {
	pm.wait.Collect(ch)
	var active, idle, opening, waiting int
	for _, s := range pm.mgr.Servers() {
		active += s.Active
		idle += s.Idle
		opening += s.Opening
		waiting += s.Waiting
	}
	ch <- prometheus.MustNewConstMetric(pm.servers, prometheus.GaugeValue, float64(active), "active")
	ch <- prometheus.MustNewConstMetric(pm.servers, prometheus.GaugeValue, float64(idle), "idle")
	ch <- prometheus.MustNewConstMetric(pm.servers, prometheus.GaugeValue, float64(opening), "opening")
	ch <- prometheus.MustNewConstMetric(pm.waiting, prometheus.GaugeValue, float64(waiting))
	c := pm.mgr.Counters()
	ch <- prometheus.MustNewConstMetric(pm.opened, prometheus.CounterValue, float64(c.ServersOpened))
	ch <- prometheus.MustNewConstMetric(pm.closed, prometheus.CounterValue, float64(c.ServersClosed))
	ch <- prometheus.MustNewConstMetric(pm.evictions, prometheus.CounterValue, float64(c.Evictions))
	ch <- prometheus.MustNewConstMetric(pm.queueTimeouts, prometheus.CounterValue, float64(c.QueueTimeouts))
}
