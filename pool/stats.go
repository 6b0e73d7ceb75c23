package pool

import (
	"cmp"
	"slices"
	"sync/atomic"
	"time"
)

// PoolStats describes one pool, as PgBouncer's SHOW POOLS does.
type PoolStats struct {
	Key Key
	// ClientsActive is the callers holding a server connection of the pool
	// or logging one in; ClientsWaiting those queued for one.
	ClientsActive, ClientsWaiting int
	// ServersActive is the server connections handed out, ServersIdle
	// those kept for reuse, ServersOpening those being logged in.
	ServersActive, ServersIdle, ServersOpening int
	// Waits is the number of Acquires that queued and were served;
	// WaitTotal their summed wait and MaxWait the longest, since the pool
	// was created.
	Waits     int64
	WaitTotal time.Duration
	MaxWait   time.Duration
}

// ServerStats describes one upstream server's budget.
type ServerStats struct {
	// Server is host:port.
	Server string
	// Max is the budget (Config.MaxServerConnections); Open the server
	// connections open or being opened: Active handed out, Idle kept for
	// reuse, Opening being logged in (and, briefly, being closed).
	Max, Open, Active, Idle, Opening int
	// Waiting is the Acquires queued; WaitingTenants the tenants they
	// belong to.
	Waiting, WaitingTenants int
	// Tenants and Pools are those with a pool on the server.
	Tenants, Pools int
}

// Counters are totals since New. Plain numbers for the caller's metrics.
type Counters struct {
	ServersOpened  int64 // dialled successfully
	ServersClosed  int64 // closed, for any reason
	DialErrors     int64
	Evictions      int64         // idle connections closed to make room for another pool
	IdleClosed     int64         // closed after IdleTimeout
	LifetimeClosed int64         // closed after MaxLifetime
	QueueTimeouts  int64         // Acquires that failed with a *BudgetError
	Waits          int64         // Acquires that queued and were served
	WaitTime       time.Duration // summed over Waits
	PoolsCreated   int64
	PoolsRemoved   int64
}

type counters struct {
	opened, closed, dialErrors, evictions, idleClosed, lifetimeClosed atomic.Int64
	queueTimeouts, waits, waitNanos, poolsCreated, poolsRemoved       atomic.Int64
}

// Counters returns the totals since New.
func (m *Manager) Counters() Counters {
	return Counters{
		ServersOpened: m.c.opened.Load(), ServersClosed: m.c.closed.Load(), DialErrors: m.c.dialErrors.Load(),
		Evictions: m.c.evictions.Load(), IdleClosed: m.c.idleClosed.Load(), LifetimeClosed: m.c.lifetimeClosed.Load(),
		QueueTimeouts: m.c.queueTimeouts.Load(), Waits: m.c.waits.Load(), WaitTime: time.Duration(m.c.waitNanos.Load()),
		PoolsCreated: m.c.poolsCreated.Load(), PoolsRemoved: m.c.poolsRemoved.Load(),
	}
}

// Pools returns every pool's stats, ordered by server, tenant, database
// and user.
func (m *Manager) Pools() []PoolStats {
	var out []PoolStats
	for _, b := range m.budgetList() {
		b.mu.Lock()
		for p := range b.pools {
			out = append(out, PoolStats{
				Key:           p.key,
				ClientsActive: p.active + p.opening, ClientsWaiting: p.waiting,
				ServersActive: p.active, ServersIdle: p.idle.n, ServersOpening: p.opening,
				Waits: p.waits, WaitTotal: p.waitSum, MaxWait: p.waitMax,
			})
		}
		b.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b PoolStats) int {
		return cmp.Or(cmp.Compare(a.Key.Server, b.Key.Server), cmp.Compare(a.Key.Tenant, b.Key.Tenant),
			cmp.Compare(a.Key.Database, b.Key.Database), cmp.Compare(a.Key.User, b.Key.User))
	})
	return out
}

// Servers returns every upstream server's budget, ordered by server.
func (m *Manager) Servers() []ServerStats {
	bs := m.budgetList()
	out := make([]ServerStats, 0, len(bs))
	for _, b := range bs {
		b.mu.Lock()
		s := ServerStats{Server: b.addr, Max: b.max, Open: b.open, Idle: b.idle.n, Tenants: len(b.tenants), Pools: len(b.pools)}
		for p := range b.pools {
			s.Active += p.active
		}
		s.Opening = s.Open - s.Active - s.Idle
		if t := b.ring; t != nil {
			for {
				s.Waiting += t.wq.n
				s.WaitingTenants++
				if t = t.rnext; t == b.ring {
					break
				}
			}
		}
		b.mu.Unlock()
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ServerStats) int { return cmp.Compare(a.Server, b.Server) })
	return out
}

func (m *Manager) budgetList() []*budget {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*budget, 0, len(m.budgets))
	for _, b := range m.budgets {
		out = append(out, b)
	}
	return out
}
