package pool

import (
	"sync"
	"time"
)

// budget is one upstream server's connection budget and the pools drawing
// on it. One mutex guards all of it: every decision (whose waiter gets a
// freed connection, which idle connection to close) looks at several
// tenants at once.
type budget struct {
	addr  string
	max   int // the budget; immutable, as floor and ceil
	floor int // Config.MinPerTenant
	ceil  int // Config.MaxPerTenant

	mu      sync.Mutex
	open    int                // server connections open or being opened; guarded by mu
	idle    connList           // all idle connections, most recently idle first; guarded by mu
	tenants map[string]*tenant // guarded by mu
	pools   map[*pool]struct{} // guarded by mu
	ring    *tenant            // next tenant with waiters to serve (round robin); nil if none waits; guarded by mu
	removed bool               // dropped from the Manager; guarded by mu
	login   time.Duration      // how long a server login takes here, a moving average; guarded by mu
}

// noteLoginLocked folds d, how long a successful dial took, into b.login.
func (b *budget) noteLoginLocked(d time.Duration) {
	if b.login == 0 {
		b.login = d
		return
	}
	b.login += (d - b.login) / 8
}

// tenant is a tenant's share of one budget, over all its pools there.
type tenant struct {
	name   string
	open   int // connections of the tenant's pools, open or being opened
	npools int
	wq     waitQueue
	// Ring links, set while the tenant has waiters.
	rprev, rnext *tenant
}

// pool is one route's server connections.
type pool struct {
	m   *Manager
	key Key
	b   *budget
	t   *tenant

	// Guarded by b.mu.
	idle     connList // most recently released first (LIFO)
	active   int      // handed out
	opening  int      // being dialled
	waiting  int
	lastUsed time.Time
	removed  bool
	waits    int64
	waitSum  time.Duration
	waitMax  time.Duration
}

func (p *pool) emptyLocked() bool {
	return p.idle.n == 0 && p.active == 0 && p.opening == 0 && p.waiting == 0
}

// grant is what a waiter is handed: a connection, a reserved slot to dial
// into (c and err nil), or an error. close holds connections the waiter
// must close first (evicted to make its slot): closing before dialling
// keeps the server's count within the budget.
type grant struct {
	c      *Conn
	err    error
	close  []*Conn
	waited time.Duration
}

type waiter struct {
	p          *pool
	prev, next *waiter
	since      time.Time
	ch         chan grant // buffered: granting never blocks
	done       bool       // granted; guarded by p.b.mu
}

// waitQueue is a tenant's waiters, first come first.
type waitQueue struct {
	head, tail *waiter
	n          int
}

func (q *waitQueue) push(w *waiter) {
	w.prev, w.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
}

func (q *waitQueue) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next = nil, nil
	q.n--
}

// enqueueLocked queues w; its tenant joins the end of the round.
func (b *budget) enqueueLocked(w *waiter) {
	t := w.p.t
	t.wq.push(w)
	w.p.waiting++
	if t.wq.n > 1 {
		return
	}
	if b.ring == nil {
		t.rprev, t.rnext = t, t
		b.ring = t
		return
	}
	last := b.ring.rprev
	t.rprev, t.rnext = last, b.ring
	last.rnext = t
	b.ring.rprev = t
}

// dequeueLocked takes w off its queue, and its tenant off the ring when
// that was its last waiter. The ring's cursor moves past a removed tenant.
func (b *budget) dequeueLocked(w *waiter) {
	t := w.p.t
	t.wq.remove(w)
	w.p.waiting--
	if t.wq.n > 0 {
		return
	}
	if t.rnext == t {
		b.ring = nil
	} else {
		t.rprev.rnext = t.rnext
		t.rnext.rprev = t.rprev
		if b.ring == t {
			b.ring = t.rnext
		}
	}
	t.rprev, t.rnext = nil, nil
}

// grantLocked hands g to w. A round-robin grant moves the cursor past w's
// tenant; a floor grant (out of turn) leaves it.
func (b *budget) grantLocked(w *waiter, g grant, now time.Time, inTurn bool) {
	next := w.p.t.rnext
	b.dequeueLocked(w)
	if inTurn && b.ring != nil {
		b.ring = next // still on the ring: w's tenant if it still waits, else the one after it
	}
	if g.err == nil {
		p := w.p
		d := now.Sub(w.since)
		p.waits++
		p.waitSum += d
		p.waitMax = max(p.waitMax, d)
		p.m.c.waits.Add(1)
		p.m.c.waitNanos.Add(int64(d))
		g.waited = d
	}
	w.done = true
	w.ch <- g
}

// dispatchLocked serves waiters while capacity allows: tenants below the
// floor first, then round robin. It appends to closing the connections
// the caller must close that no waiter was handed to close.
func (b *budget) dispatchLocked(now time.Time, closing []*Conn) []*Conn {
	for b.ring != nil {
		if b.open >= b.max && b.idle.n == 0 {
			return closing // nothing to hand out, nothing to evict
		}
		served := false
		if b.floor > 0 {
			closing, served = b.serveOneLocked(now, closing, true)
		}
		if !served {
			closing, served = b.serveOneLocked(now, closing, false)
		}
		if !served {
			return closing
		}
	}
	return closing
}

// serveOneLocked serves the first tenant's head waiter, in ring order from
// the cursor, that capacity allows; with underFloor only tenants below the
// floor.
func (b *budget) serveOneLocked(now time.Time, closing []*Conn, underFloor bool) ([]*Conn, bool) {
	start := b.ring
	t := start
	for {
		next := t.rnext
		w := t.wq.head
		if !underFloor || t.open < b.floor {
			c, ok, cl := w.p.m.takeLocked(w.p, now, nil)
			if ok {
				b.grantLocked(w, grant{c: c, close: cl}, now, !underFloor)
				return closing, true
			}
			closing = append(closing, cl...)
		}
		if b.ring == nil { // takeLocked cannot empty the ring, but be safe
			return closing, false
		}
		t = next
		if t == start {
			return closing, false
		}
	}
}

// belowFloorWaitsLocked reports whether a tenant below the floor waits:
// it is served before any turn goes on.
func (b *budget) belowFloorWaitsLocked() bool {
	if b.floor == 0 || b.ring == nil {
		return false
	}
	t := b.ring
	for {
		if t.open < b.floor {
			return true
		}
		if t = t.rnext; t == b.ring {
			return false
		}
	}
}

// turnWaiterLocked returns the waiter of c's pool that c, just released
// clean, should go to straight away, or nil. It goes to the pool's first
// waiter while no other tenant waits (c's turn starts over), or while c's
// turn is shorter than turn, or than a login here takes (handing c to
// another tenant costs one: a turn at least that long keeps logins to at
// most half of a connection's time however slow they get), and no tenant
// below the floor waits; after that it goes back to the budget, whose
// round of waiting tenants decides who gets the capacity.
func (b *budget) turnWaiterLocked(c *Conn, now time.Time, turn time.Duration) *waiter {
	p := c.p
	if p.waiting == 0 {
		return nil
	}
	if p.t.rnext == p.t { // only c's tenant waits
		c.turn = now
	} else if turn < 0 || now.Sub(c.turn) >= max(turn, b.login) || b.belowFloorWaitsLocked() {
		return nil
	}
	for w := p.t.wq.head; w != nil; w = w.next {
		if w.p == p {
			return w
		}
	}
	return nil
}
