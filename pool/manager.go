package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Manager owns the pools of all routes and the budgets of all upstream
// servers. Create it with New and stop it with Close. Safe for concurrent
// use.
type Manager struct {
	cfg    Config
	closed atomic.Bool

	mu      sync.RWMutex
	pools   map[Key]*pool      // guarded by mu
	budgets map[string]*budget // by host:port; guarded by mu

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	c         counters
}

// New returns a Manager with cfg's limits. It starts the janitor
// goroutine, which Close stops.
func New(cfg Config) *Manager {
	m := &Manager{
		cfg:     cfg,
		pools:   make(map[Key]*pool),
		budgets: make(map[string]*budget),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go m.janitor()
	return m
}

// Acquire returns a server connection of key's pool: an idle one if there
// is one, else a new one made by dial (on this goroutine, bounded by ctx)
// when key.Server's budget and the tenant's ceiling allow, else it queues
// until capacity frees for it. The pool is created on first use. A wait
// ends with a *WaitError wrapping ctx's error, a *BudgetError after
// Config.QueueTimeout, or ErrClosed; dial's errors are returned as they are. The caller must give
// the Conn back with Release or ResetRelease.
func (m *Manager) Acquire(ctx context.Context, key Key, dial DialFunc) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for {
		p := m.pool(key)
		b := p.b
		b.mu.Lock()
		if p.removed { // the janitor dropped it after the lookup
			b.mu.Unlock()
			continue
		}
		// Checked under b.mu: Close flushes each budget's waiters under it.
		if m.closed.Load() {
			b.mu.Unlock()
			return nil, ErrClosed
		}
		now := time.Now()
		c, ok, closing := m.takeLocked(p, now, nil)
		if ok {
			if len(closing) > 0 && b.ring != nil { // expired connections freed slots
				closing = b.dispatchLocked(now, closing)
			}
			b.mu.Unlock()
			m.closeConns(closing)
			if c != nil {
				return c, nil
			}
			return m.dial(ctx, p, dial)
		}
		w := &waiter{p: p, since: now, ch: make(chan grant, 1)}
		b.enqueueLocked(w)
		if len(closing) > 0 { // expired connections freed slots: maybe for w
			closing = b.dispatchLocked(now, closing)
		}
		b.mu.Unlock()
		m.closeConns(closing)
		return m.wait(ctx, w, dial)
	}
}

// pool returns key's pool, creating it (and its budget and tenant share)
// if needed.
func (m *Manager) pool(key Key) *pool {
	m.mu.RLock()
	p := m.pools[key]
	m.mu.RUnlock()
	if p != nil {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.pools[key]; p != nil {
		return p
	}
	b := m.budgets[key.Server]
	if b == nil {
		b = &budget{
			addr: key.Server, max: m.cfg.maxServer(), floor: m.cfg.floor(), ceil: m.cfg.ceiling(),
			idle:    connList{k: listBudget},
			tenants: make(map[string]*tenant),
			pools:   make(map[*pool]struct{}),
		}
		m.budgets[key.Server] = b
	}
	p = &pool{m: m, key: key, b: b, idle: connList{k: listPool}, lastUsed: time.Now()}
	b.mu.Lock()
	t := b.tenants[key.Tenant]
	if t == nil {
		t = &tenant{name: key.Tenant}
		b.tenants[key.Tenant] = t
	}
	t.npools++
	p.t = t
	b.pools[p] = struct{}{}
	b.mu.Unlock()
	m.pools[key] = p
	m.c.poolsCreated.Add(1)
	return p
}

// takeLocked tries to serve p now: with its most recently released idle
// connection (closing expired ones on the way), else with a free slot of
// the budget, else by evicting the least recently used idle connection of
// another of the tenant's routes or, when the tenant holds none or two
// fewer, of another tenant (of the same tenant only, when the tenant is at
// its ceiling).
// ok with a nil Conn means a slot was reserved for p: the caller dials.
func (m *Manager) takeLocked(p *pool, now time.Time, closing []*Conn) (c *Conn, ok bool, _ []*Conn) {
	b, t := p.b, p.t
	for c := p.idle.head; c != nil; c = p.idle.head {
		p.idle.remove(c)
		b.idle.remove(c)
		if m.expired(c, now) {
			m.dropLocked(c)
			m.c.lifetimeClosed.Add(1)
			closing = append(closing, c)
			continue
		}
		c.state = stateActive
		c.turn = now
		p.active++
		return c, true, closing
	}
	if t.open >= b.ceil || b.open >= b.max {
		// The victim is the least recently used idle connection of the
		// tenant's own other routes or, below the ceiling, of another
		// tenant when this one has none, or when that one holds at least
		// two more than this one. So a tenant never loses its connections
		// to a bigger one (max-min fairness: hundreds of busy clients of
		// one tenant cannot churn away the few connections small tenants
		// keep between their queries), and two tenants never take turns
		// evicting each other: each eviction costs a server login, more
		// than a tenant that has a connection gains from a second.
		var v *Conn
		for x := b.idle.tail; x != nil; x = x.l[listBudget].prev {
			if x.p.t == t || (t.open < b.ceil && (t.open == 0 || x.p.t.open > t.open+1)) {
				v = x
				break
			}
		}
		if v == nil {
			return nil, false, closing
		}
		v.p.idle.remove(v)
		b.idle.remove(v)
		m.dropLocked(v)
		m.c.evictions.Add(1)
		closing = append(closing, v)
	}
	b.open++
	t.open++
	p.opening++
	return nil, true, closing
}

// dropLocked accounts for c, no longer in any list, being closed.
func (m *Manager) dropLocked(c *Conn) {
	c.state = stateClosed
	c.p.b.open--
	c.p.t.open--
}

func (m *Manager) expired(c *Conn, now time.Time) bool {
	return m.cfg.MaxLifetime > 0 && now.Sub(c.created) >= m.cfg.MaxLifetime
}

// closeConns closes connections taken out of the pools. Outside any lock:
// closing a TLS connection writes.
func (m *Manager) closeConns(cs []*Conn) {
	for _, c := range cs {
		m.closeConn(c)
	}
}

func (m *Manager) closeConn(c *Conn) {
	_ = c.Conn.Close()
	m.c.closed.Add(1)
}

// dial fills a slot reserved for p.
func (m *Manager) dial(ctx context.Context, p *pool, dial DialFunc) (*Conn, error) {
	start := time.Now()
	s, err := dial(ctx)
	if err == nil && s.Conn == nil {
		err = errors.New("pool: the dial function returned no connection and no error")
	}
	now := time.Now()
	b := p.b
	b.mu.Lock()
	p.opening--
	if err != nil || m.closed.Load() {
		b.open--
		p.t.open--
		p.lastUsed = now
		closing := b.dispatchLocked(now, nil)
		b.mu.Unlock()
		m.closeConns(closing)
		if err != nil {
			m.c.dialErrors.Add(1)
			return nil, err
		}
		_ = s.Conn.Close()
		return nil, ErrClosed
	}
	c := &Conn{Server: s, p: p, created: now, turn: now, state: stateActive}
	p.active++
	b.noteLoginLocked(now.Sub(start))
	b.mu.Unlock()
	m.c.opened.Add(1)
	return c, nil
}

// wait waits for w's grant.
func (m *Manager) wait(ctx context.Context, w *waiter, dial DialFunc) (*Conn, error) {
	timer := time.NewTimer(m.cfg.queueTimeout())
	defer timer.Stop()
	timedOut := false
	select {
	case g := <-w.ch:
		if g.err == nil && m.cfg.OnWait != nil {
			m.cfg.OnWait(g.waited)
		}
		return m.granted(ctx, w.p, g, dial)
	case <-ctx.Done():
	case <-timer.C:
		timedOut = true
	}
	p := w.p
	b := p.b
	now := time.Now()
	b.mu.Lock()
	if w.done { // granted meanwhile: give it back
		b.mu.Unlock()
		m.giveBack(p, <-w.ch)
	} else {
		b.dequeueLocked(w)
		// The tenant's next waiter may be servable where w was not.
		closing := b.dispatchLocked(now, nil)
		b.mu.Unlock()
		m.closeConns(closing)
	}
	if !timedOut {
		return nil, &WaitError{Server: b.addr, Waited: now.Sub(w.since), Err: ctx.Err()}
	}
	m.c.queueTimeouts.Add(1)
	e := &BudgetError{Server: b.addr, Limit: b.max, Waited: now.Sub(w.since)}
	b.mu.Lock()
	if p.t.open >= b.ceil && b.ceil < b.max {
		e.Tenant, e.Limit = p.t.name, b.ceil
	}
	b.mu.Unlock()
	return nil, e
}

func (m *Manager) granted(ctx context.Context, p *pool, g grant, dial DialFunc) (*Conn, error) {
	m.closeConns(g.close)
	switch {
	case g.err != nil:
		return nil, g.err
	case g.c != nil:
		return g.c, nil
	}
	return m.dial(ctx, p, dial)
}

// giveBack returns a grant its waiter no longer wants.
func (m *Manager) giveBack(p *pool, g grant) {
	m.closeConns(g.close)
	switch {
	case g.err != nil:
	case g.c != nil:
		m.release(g.c, true)
	default: // an unused slot
		b := p.b
		now := time.Now()
		b.mu.Lock()
		p.opening--
		b.open--
		p.t.open--
		closing := b.dispatchLocked(now, nil)
		b.mu.Unlock()
		m.closeConns(closing)
	}
}

func (m *Manager) release(c *Conn, clean bool) {
	p := c.p
	b := p.b
	now := time.Now()
	expired := m.expired(c, now)
	keep := clean && !expired
	if !keep {
		// Closed before its slot is freed, so that whoever gets the slot
		// dials after the server saw this one go.
		_ = c.Conn.Close()
	}
	b.mu.Lock()
	if c.state != stateActive {
		b.mu.Unlock()
		panic("pool: Conn released twice")
	}
	p.active--
	p.lastUsed = now
	if keep && m.closed.Load() { // after Close flushed the idle lists
		keep = false
		defer m.closeConn(c)
	} else if !keep {
		m.c.closed.Add(1)
		if clean {
			m.c.lifetimeClosed.Add(1)
		}
	}
	if keep {
		if w := b.turnWaiterLocked(c, now, m.cfg.turn()); w != nil {
			// Straight to the next client of its own route: no login.
			b.grantLocked(w, grant{c: c}, now, false)
			p.active++
			b.mu.Unlock()
			return
		}
		c.state = stateIdle
		c.idleSince = now
		p.idle.pushFront(c)
		b.idle.pushFront(c)
	} else {
		m.dropLocked(c)
	}
	var closing []*Conn
	if b.ring != nil {
		closing = b.dispatchLocked(now, nil)
	}
	b.mu.Unlock()
	m.closeConns(closing)
}

// Close stops the janitor, fails every waiting Acquire with ErrClosed and
// closes idle connections. Connections in use are closed when released;
// later Acquires fail with ErrClosed. Close does not wait for connections
// in use. Safe to call more than once.
func (m *Manager) Close() {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		close(m.stop)
		<-m.done
		budgets := m.budgetList()
		now := time.Now()
		for _, b := range budgets {
			var closing []*Conn
			b.mu.Lock()
			for b.ring != nil {
				b.grantLocked(b.ring.wq.head, grant{err: ErrClosed}, now, true)
			}
			for c := b.idle.head; c != nil; c = b.idle.head {
				c.p.idle.remove(c)
				b.idle.remove(c)
				m.dropLocked(c)
				closing = append(closing, c)
			}
			b.mu.Unlock()
			m.closeConns(closing)
		}
	})
}

// janitor sweeps periodically until Close.
func (m *Manager) janitor() {
	defer close(m.done)
	tick := time.NewTicker(m.cfg.sweepEvery())
	defer tick.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
			m.sweep(time.Now())
		}
	}
}

// sweep closes idle connections past IdleTimeout or MaxLifetime and
// removes pools that have been empty for IdleTimeout, and budgets and
// tenant shares left without pools.
func (m *Manager) sweep(now time.Time) {
	idleTimeout := m.cfg.idleTimeout()
	budgets := m.budgetList()
	var stale []*pool
	for _, b := range budgets {
		var closing []*Conn
		b.mu.Lock()
		for c := b.idle.tail; c != nil; {
			prev := c.l[listBudget].prev
			idle := now.Sub(c.idleSince) >= idleTimeout
			if !idle && m.cfg.MaxLifetime <= 0 {
				break // the rest were idle less long
			}
			if idle || m.expired(c, now) {
				// Out of the lists, but its slot stays taken until it is
				// closed: whoever gets the slot dials after the server saw
				// this one go.
				c.p.idle.remove(c)
				b.idle.remove(c)
				c.state = stateClosed
				if idle {
					m.c.idleClosed.Add(1)
				} else {
					m.c.lifetimeClosed.Add(1)
				}
				closing = append(closing, c)
			}
			c = prev
		}
		b.mu.Unlock()
		if len(closing) > 0 {
			m.closeConns(closing)
			b.mu.Lock()
			for _, c := range closing {
				m.dropLocked(c)
			}
			closing = b.dispatchLocked(now, nil)
			b.mu.Unlock()
			m.closeConns(closing)
		}
		b.mu.Lock()
		for p := range b.pools {
			if p.emptyLocked() && now.Sub(p.lastUsed) >= idleTimeout {
				stale = append(stale, p)
			}
		}
		b.mu.Unlock()
	}
	if len(stale) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range stale {
		b := p.b
		b.mu.Lock()
		if !p.removed && p.emptyLocked() && now.Sub(p.lastUsed) >= idleTimeout {
			p.removed = true
			delete(m.pools, p.key)
			delete(b.pools, p)
			m.c.poolsRemoved.Add(1)
			if p.t.npools--; p.t.npools == 0 {
				delete(b.tenants, p.t.name)
			}
			if len(b.pools) == 0 {
				delete(m.budgets, b.addr)
			}
		}
		b.mu.Unlock()
	}
}
