package pool_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/pool"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// fakeServers is a dial function's backend: each dial makes one end of a
// net.Pipe, and the fake counts the connections still open.
type fakeServers struct {
	dials   atomic.Int64
	live    atomic.Int64
	fail    atomic.Pointer[error]
	maxLive atomic.Int64
}

type fakeConn struct {
	net.Conn
	f      *fakeServers
	closed atomic.Bool
	id     int64
}

func (c *fakeConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.f.live.Add(-1)
	}
	return c.Conn.Close()
}

func (f *fakeServers) dial(ctx context.Context) (pool.Server, error) {
	if err := f.fail.Load(); err != nil {
		return pool.Server{}, *err
	}
	if err := ctx.Err(); err != nil {
		return pool.Server{}, err
	}
	a, b := net.Pipe()
	_ = b.Close()
	id := f.dials.Add(1)
	n := f.live.Add(1)
	for {
		m := f.maxLive.Load()
		if n <= m || f.maxLive.CompareAndSwap(m, n) {
			break
		}
	}
	return pool.Server{Conn: &fakeConn{Conn: a, f: f, id: id}, PID: uint32(id), TxStatus: 'I'}, nil
}

func key(tenant string) pool.Key {
	return pool.Key{Tenant: tenant, Server: "db1:5432", Database: tenant, User: tenant}
}

func connID(c *pool.Conn) int64 { return c.Conn.(*fakeConn).id }

// waitFor polls cond until it holds, failing t after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, what, cond)
}

func server(m *pool.Manager) pool.ServerStats {
	for _, s := range m.Servers() {
		if s.Server == "db1:5432" {
			return s
		}
	}
	return pool.ServerStats{}
}

func mustAcquire(t *testing.T, m *pool.Manager, k pool.Key, f *fakeServers) *pool.Conn {
	t.Helper()
	c, err := m.Acquire(t.Context(), k, f.dial)
	if err != nil {
		t.Fatalf("acquire %s: %v", k.Tenant, err)
	}
	return c
}

// queue starts Acquires that queue on m, each on a goroutine of its own,
// and hands over what they get on got; stop cancels those still waiting
// and waits for them all.
type queue struct {
	acquire func(tenant string)
	got     chan *pool.Conn
	stop    func()
}

func newQueue(t *testing.T, m *pool.Manager, f *fakeServers) *queue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &queue{got: make(chan *pool.Conn)}
	var wg sync.WaitGroup
	q.acquire = func(tenant string) {
		wg.Go(func() {
			c, err := m.Acquire(ctx, key(tenant), f.dial)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					t.Error(err)
				}
				return
			}
			q.got <- c
		})
	}
	q.stop = func() { cancel(); wg.Wait() }
	t.Cleanup(q.stop)
	return q
}

func TestReuseIsLIFO(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{})
	defer m.Close()
	a := mustAcquire(t, m, key("acme"), f)
	b := mustAcquire(t, m, key("acme"), f)
	if a.PID == b.PID {
		t.Fatal("two acquires got one connection")
	}
	a.Release(true)
	b.Release(true)
	c := mustAcquire(t, m, key("acme"), f)
	if c.PID != b.PID {
		t.Errorf("got connection %d, want the last released, %d", c.PID, b.PID)
	}
	if got := f.dials.Load(); got != 2 {
		t.Errorf("dials = %d, want 2", got)
	}
	if c.Key() != key("acme") {
		t.Errorf("Key = %+v", c.Key())
	}
	ps := m.Pools()
	if len(ps) != 1 || ps[0].ServersActive != 1 || ps[0].ServersIdle != 1 || ps[0].ClientsActive != 1 {
		t.Errorf("pool stats = %+v", ps)
	}
	c.Release(false) // dirty: closed
	if got := f.live.Load(); got != 1 {
		t.Errorf("live = %d after a dirty release, want 1", got)
	}
	cs := m.Counters()
	if cs.ServersOpened != 2 || cs.ServersClosed != 1 || cs.PoolsCreated != 1 {
		t.Errorf("counters = %+v", cs)
	}
}

func TestBudgetQueuesAndHandsOver(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	var waited atomic.Int64
	m := pool.New(pool.Config{MaxServerConnections: 3, OnWait: func(d time.Duration) { waited.Add(int64(d) + 1) }})
	defer m.Close()
	held := []*pool.Conn{
		mustAcquire(t, m, key("a"), f), mustAcquire(t, m, key("b"), f), mustAcquire(t, m, key("c"), f),
	}
	got := make(chan *pool.Conn)
	go func() {
		c, err := m.Acquire(context.Background(), key("a"), f.dial)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitFor(t, "a queued acquire", func() bool { return server(m).Waiting == 1 })
	if s := server(m); s.Open != 3 || s.Max != 3 || s.Active != 3 || s.Idle != 0 || s.Opening != 0 || s.WaitingTenants != 1 || s.Tenants != 3 {
		t.Errorf("server stats = %+v", s)
	}
	held[0].Release(true) // a's own: handed over as it is
	c := <-got
	if c.PID != held[0].PID {
		t.Errorf("waiter got connection %d, want the released %d", c.PID, held[0].PID)
	}
	if f.dials.Load() != 3 {
		t.Errorf("dials = %d, want 3", f.dials.Load())
	}
	c.Release(true)
	held[1].Release(true)
	held[2].Release(true)
	if m := f.maxLive.Load(); m > 3 {
		t.Errorf("%d connections were open at once, budget 3", m)
	}
	if ps := m.Pools(); ps[0].Waits != 1 || ps[0].Key.Tenant != "a" || ps[0].WaitTotal <= 0 || ps[0].MaxWait != ps[0].WaitTotal {
		t.Errorf("pool stats = %+v", ps[0])
	}
	if cs := m.Counters(); cs.Waits != 1 || cs.WaitTime != m.Pools()[0].WaitTotal || waited.Load() != int64(cs.WaitTime)+1 {
		t.Errorf("counters = %+v, OnWait saw %d", cs, waited.Load()-1)
	}
}

// TestFairness: one tenant with 500 queued acquirers cannot starve a tenant
// with one; the one is served by the second release at the latest.
func TestFairness(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 2, Turn: -1}) // no turns: the round alone (TestTurn has them)
	defer m.Close()
	held := []*pool.Conn{mustAcquire(t, m, key("big"), f), mustAcquire(t, m, key("big"), f)}

	q := newQueue(t, m, f)
	acquire, got := q.acquire, q.got
	for range 500 {
		acquire("big")
	}
	waitFor(t, "500 queued", func() bool { return server(m).Waiting == 500 })
	acquire("small")
	waitFor(t, "501 queued", func() bool { return server(m).Waiting == 501 })

	releases := 0
	for served := false; !served; {
		if releases == 10 {
			t.Fatal("the small tenant was not served in 10 releases")
		}
		held[0].Release(true)
		held = held[1:]
		releases++
		c := <-got
		served = c.Key().Tenant == "small"
		held = append(held, c)
	}
	if releases > 2 {
		t.Errorf("small tenant served after %d releases, want at most 2", releases)
	}
	if live := f.maxLive.Load(); live > 2 {
		t.Errorf("%d connections open at once, budget 2", live)
	}
	q.stop()
	for _, c := range held {
		c.Release(true)
	}
	if s := server(m); s.Waiting != 0 || s.Open > 2 {
		t.Errorf("after cancel: %+v", s)
	}
}

// TestTurn: a released connection goes on serving its own tenant's queued
// acquirers, with no new login, while its turn lasts, even though another
// tenant waits; with turns off it goes round the waiting tenants.
func TestTurn(t *testing.T) {
	for _, tc := range []struct {
		name      string
		turn      time.Duration
		wantSmall bool // the small tenant gets the second release
	}{
		{"long turn", time.Hour, false},
		{"no turn", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			f := &fakeServers{}
			m := pool.New(pool.Config{MaxServerConnections: 1, Turn: tc.turn})
			defer m.Close()
			held := mustAcquire(t, m, key("big"), f)
			first := held.PID
			q := newQueue(t, m, f)
			acquire, got := q.acquire, q.got
			for range 10 {
				acquire("big")
			}
			waitFor(t, "10 queued", func() bool { return server(m).Waiting == 10 })
			acquire("small")
			waitFor(t, "11 queued", func() bool { return server(m).Waiting == 11 })

			held.Release(true) // the cursor is at big: big's either way
			held = <-got
			held.Release(true)
			held = <-got
			if small := held.Key().Tenant == "small"; small != tc.wantSmall {
				t.Errorf("second release went to %s", held.Key().Tenant)
			}
			if !tc.wantSmall {
				for range 5 {
					held.Release(true)
					held = <-got
				}
				if held.Key().Tenant != "big" || held.PID != first || f.dials.Load() != 1 {
					t.Errorf("after 7 releases in one turn: tenant %s, pid %d (first %d), %d dials, want one connection throughout",
						held.Key().Tenant, held.PID, first, f.dials.Load())
				}
			}
			q.stop()
			held.Release(true)
		})
	}
}

// TestTurnLastsALogin: with logins slower than Turn, a turn lasts as long
// as a login takes: handing the connection to another tenant would cost
// one.
func TestTurnLastsALogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		slow := func(ctx context.Context) (pool.Server, error) {
			time.Sleep(time.Second) // a login that slow
			return f.dial(ctx)
		}
		m := pool.New(pool.Config{MaxServerConnections: 1, Turn: time.Millisecond})
		defer m.Close()
		held, err := m.Acquire(t.Context(), key("big"), slow)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *pool.Conn)
		for _, tenant := range []string{"big", "big", "small"} {
			go func() {
				c, err := m.Acquire(t.Context(), key(tenant), slow)
				if err != nil {
					t.Error(err)
					return
				}
				got <- c
			}()
			synctest.Wait()
		}
		for range 2 {
			time.Sleep(100 * time.Millisecond) // past Turn, well within a login
			held.Release(true)
			held = <-got
		}
		if held.Key().Tenant != "big" || f.dials.Load() != 1 {
			t.Errorf("within a login's time the connection went to %s (%d dials), want big's waiters first", held.Key().Tenant, f.dials.Load())
		}
		held.Release(true)
		held = <-got // small's, after closing big's idle connection and a login
		if held.Key().Tenant != "small" {
			t.Errorf("last went to %s", held.Key().Tenant)
		}
		held.Release(true)
	})
}

// TestFloor: a tenant below its floor is served before the round-robin
// cursor's tenant.
func TestFloor(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 3, MinPerTenant: 1})
	defer m.Close()
	a1, a2 := mustAcquire(t, m, key("a"), f), mustAcquire(t, m, key("a"), f)
	b1 := mustAcquire(t, m, key("b"), f)

	got := make(chan *pool.Conn, 10)
	var wg sync.WaitGroup
	acquire := func(tenant string, queued int) {
		wg.Go(func() {
			c, err := m.Acquire(context.Background(), key(tenant), f.dial)
			if err != nil {
				t.Error(err)
				return
			}
			got <- c
		})
		waitFor(t, tenant+" queued", func() bool { return server(m).Waiting == queued })
	}
	acquire("a", 1)
	acquire("b", 2) // b holds its floor already
	acquire("c", 3) // c holds nothing: below the floor

	b1.Release(true)
	if c := <-got; c.Key().Tenant != "c" {
		t.Fatalf("first freed connection went to %s, want c (below the floor)", c.Key().Tenant)
	} else {
		defer c.Release(true)
	}
	// c took b's idle connection: now b is below the floor, ahead of a.
	a1.Release(true)
	if c := <-got; c.Key().Tenant != "b" {
		t.Fatalf("second freed connection went to %s, want b (below the floor)", c.Key().Tenant)
	} else {
		defer c.Release(true)
	}
	a2.Release(true)
	if c := <-got; c.Key().Tenant != "a" {
		t.Fatalf("third freed connection went to %s, want a", c.Key().Tenant)
	} else {
		defer c.Release(true)
	}
	wg.Wait()
}

// TestFloorEvictsIdle: a tenant with nothing gets a connection at once by
// closing another tenant's idle one, even with the budget full.
func TestEvictsOtherTenantsIdle(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 2})
	defer m.Close()
	a1, a2 := mustAcquire(t, m, key("a"), f), mustAcquire(t, m, key("a"), f)
	a1.Release(true)
	a2.Release(true)
	b := mustAcquire(t, m, key("b"), f) // no wait: a's oldest idle is closed
	if !a1.Conn.(*fakeConn).closed.Load() || a2.Conn.(*fakeConn).closed.Load() {
		t.Error("want a's least recently used idle connection closed, and only that one")
	}
	if got := m.Counters().Evictions; got != 1 {
		t.Errorf("evictions = %d, want 1", got)
	}
	b.Release(true)
	if f.maxLive.Load() > 2 {
		t.Errorf("%d open at once, budget 2", f.maxLive.Load())
	}
}

// TestNoEvictionByBigger: a tenant may close the idle connection of a
// tenant holding more connections than it does, never of one holding as
// many or fewer: it queues for its own instead.
func TestNoEvictionByBigger(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 3, QueueTimeout: time.Minute})
	defer m.Close()
	small := mustAcquire(t, m, key("small"), f)
	small.Release(true) // small keeps one idle connection
	big1, big2 := mustAcquire(t, m, key("big"), f), mustAcquire(t, m, key("big"), f)

	got := make(chan *pool.Conn, 1)
	go func() {
		c, err := m.Acquire(context.Background(), key("big"), f.dial)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitFor(t, "big queued", func() bool { return server(m).Waiting == 1 })
	if small.Conn.(*fakeConn).closed.Load() || m.Counters().Evictions != 0 {
		t.Fatal("big (2 connections) closed small's only connection")
	}
	big1.Release(true)
	c := <-got
	if connID(c) != connID(big1) {
		t.Errorf("big's waiter got connection %d, want big's own %d", connID(c), connID(big1))
	}
	// A tenant with none may close the idle connection of one with more.
	fresh := mustAcquire(t, m, key("fresh"), f)
	if !small.Conn.(*fakeConn).closed.Load() || m.Counters().Evictions != 1 {
		t.Error("fresh (no connection) did not get small's idle one")
	}
	fresh.Release(true)
	c.Release(true)
	big2.Release(true)
}

// TestNoChurnBetweenEquals: a tenant that has a connection does not close
// the idle one of a tenant holding just one more: after the swap the two
// would be where they started, at the price of a login.
func TestNoChurnBetweenEquals(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 3, QueueTimeout: time.Minute})
	defer m.Close()
	a1, a2 := mustAcquire(t, m, key("a"), f), mustAcquire(t, m, key("a"), f)
	a2.Release(true) // a: 2 connections, one idle
	b1 := mustAcquire(t, m, key("b"), f)
	got := make(chan *pool.Conn, 1)
	go func() {
		c, err := m.Acquire(context.Background(), key("b"), f.dial)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitFor(t, "b queued", func() bool { return server(m).Waiting == 1 })
	if a2.Conn.(*fakeConn).closed.Load() || m.Counters().Evictions != 0 {
		t.Fatal("b (1 connection) closed a's idle one (a: 2)")
	}
	b1.Release(true)
	if c := <-got; connID(c) != connID(b1) {
		t.Errorf("b's waiter got %d, want b's own %d", connID(c), connID(b1))
	} else {
		c.Release(true)
	}
	a1.Release(true)
}

func TestCeiling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		m := pool.New(pool.Config{MaxServerConnections: 10, MaxPerTenant: 2, QueueTimeout: 5 * time.Second})
		defer m.Close()
		a1, a2 := mustAcquire(t, m, key("a"), f), mustAcquire(t, m, key("a"), f)
		b := mustAcquire(t, m, key("b"), f) // the budget has room for others
		start := time.Now()
		_, err := m.Acquire(t.Context(), key("a"), f.dial)
		var be *pool.BudgetError
		if !errors.As(err, &be) {
			t.Fatalf("err = %v, want a *BudgetError", err)
		}
		if be.Tenant != "a" || be.Limit != 2 || be.Server != "db1:5432" || time.Since(start) != 5*time.Second {
			t.Errorf("error = %+v after %s", be, time.Since(start))
		}
		if !strings.Contains(err.Error(), `tenant "a"`) || !strings.Contains(err.Error(), "db1:5432") {
			t.Errorf("message %q does not name the limit", err)
		}
		// A second route of a at its ceiling gets a's idle connection closed.
		a1.Release(true)
		other := pool.Key{Tenant: "a", Server: "db1:5432", Database: "a", User: "a_reader"}
		r, err := m.Acquire(t.Context(), other, f.dial)
		if err != nil {
			t.Fatal(err)
		}
		if !a1.Conn.(*fakeConn).closed.Load() {
			t.Error("a's idle connection on its other route was not closed")
		}
		r.Release(true)
		a2.Release(true)
		b.Release(true)
	})
}

func TestQueueTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		m := pool.New(pool.Config{MaxServerConnections: 1, QueueTimeout: 3 * time.Second})
		defer m.Close()
		held := mustAcquire(t, m, key("a"), f)
		_, err := m.Acquire(t.Context(), key("b"), f.dial)
		var be *pool.BudgetError
		if !errors.As(err, &be) || be.Server != "db1:5432" || be.Limit != 1 || be.Tenant != "" || be.Waited != 3*time.Second {
			t.Fatalf("err = %#v", err)
		}
		if want := "all 1 server connections of the budget of db1:5432 are in use"; !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
		if got := m.Counters().QueueTimeouts; got != 1 {
			t.Errorf("queue timeouts = %d", got)
		}
		if s := server(m); s.Waiting != 0 {
			t.Errorf("waiting = %d after the timeout", s.Waiting)
		}
		held.Release(true)
		c := mustAcquire(t, m, key("b"), f) // evicts a's idle at once
		c.Release(true)
	})
}

func TestCancelWhileQueued(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 1})
	defer m.Close()
	held := mustAcquire(t, m, key("a"), f)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error)
	go func() {
		_, err := m.Acquire(ctx, key("b"), f.dial)
		errc <- err
	}()
	waitFor(t, "queued", func() bool { return server(m).Waiting == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if s := server(m); s.Waiting != 0 || s.WaitingTenants != 0 {
		t.Errorf("after cancel: %+v", s)
	}
	held.Release(true)
	if _, err := m.Acquire(ctx, key("a"), f.dial); !errors.Is(err, context.Canceled) {
		t.Errorf("acquire with a done ctx: %v", err)
	}
	c := mustAcquire(t, m, key("a"), f)
	if c.PID != held.PID {
		t.Error("the idle connection was not reused")
	}
	c.Release(true)
}

func TestCloseWithWaiters(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 2})
	held := mustAcquire(t, m, key("a"), f)
	idle := mustAcquire(t, m, key("a"), f)
	idle.Release(true)
	// Fill the budget again, so that the next acquirers queue.
	held2 := mustAcquire(t, m, key("a"), f)
	errc := make(chan error, 3)
	for _, tn := range []string{"a", "b", "b"} {
		go func() {
			_, err := m.Acquire(context.Background(), key(tn), f.dial)
			errc <- err
		}()
	}
	waitFor(t, "3 queued", func() bool { return server(m).Waiting == 3 })
	m.Close()
	for range 3 {
		if err := <-errc; !errors.Is(err, pool.ErrClosed) {
			t.Errorf("waiter: %v, want ErrClosed", err)
		}
	}
	held.Release(true) // closed, not kept
	held2.Release(true)
	if got := f.live.Load(); got != 0 {
		t.Errorf("%d connections still open after Close and release", got)
	}
	if _, err := m.Acquire(t.Context(), key("a"), f.dial); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("acquire after Close: %v", err)
	}
	m.Close() // idempotent
}

func TestDialError(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 1})
	defer m.Close()
	boom := errors.New("login failed")
	f.fail.Store(&boom)
	if _, err := m.Acquire(t.Context(), key("a"), f.dial); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	f.fail.Store(nil)
	c := mustAcquire(t, m, key("a"), f) // the failed dial gave its slot back
	c.Release(true)
	if cs := m.Counters(); cs.DialErrors != 1 || cs.ServersOpened != 1 {
		t.Errorf("counters = %+v", cs)
	}
}

// TestDialErrorServesWaiter: a waiter queued behind a failing dial gets the
// slot back.
func TestDialErrorServesWaiter(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 1})
	defer m.Close()
	entered, proceed := make(chan struct{}), make(chan struct{})
	slow := func(ctx context.Context) (pool.Server, error) {
		close(entered)
		<-proceed
		return pool.Server{}, errors.New("refused")
	}
	errc := make(chan error)
	go func() {
		_, err := m.Acquire(t.Context(), key("a"), slow)
		errc <- err
	}()
	<-entered
	got := make(chan *pool.Conn)
	go func() {
		c, err := m.Acquire(t.Context(), key("b"), f.dial)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitFor(t, "b queued", func() bool { return server(m).Waiting == 1 })
	close(proceed)
	if err := <-errc; err == nil {
		t.Fatal("want the dial's error")
	}
	c := <-got
	c.Release(true)
}

func TestIdleTimeoutRemovesPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		m := pool.New(pool.Config{IdleTimeout: time.Minute})
		defer m.Close()
		a := mustAcquire(t, m, key("a"), f)
		b := mustAcquire(t, m, key("b"), f)
		a.Release(true)
		time.Sleep(30 * time.Second)
		b.Release(true)
		time.Sleep(45 * time.Second) // a idle 75s, b 45s
		synctest.Wait()
		if !a.Conn.(*fakeConn).closed.Load() || b.Conn.(*fakeConn).closed.Load() {
			t.Fatal("want a's connection closed after IdleTimeout, b's kept")
		}
		if ps := m.Pools(); len(ps) != 1 || ps[0].Key.Tenant != "b" {
			t.Errorf("pools = %+v, want only b's", ps)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if len(m.Pools()) != 0 || len(m.Servers()) != 0 {
			t.Errorf("pools %+v, servers %+v left after IdleTimeout", m.Pools(), m.Servers())
		}
		if cs := m.Counters(); cs.IdleClosed != 2 || cs.PoolsRemoved != 2 || cs.ServersClosed != 2 {
			t.Errorf("counters = %+v", cs)
		}
		// A pool is made again on demand.
		c := mustAcquire(t, m, key("a"), f)
		c.Release(true)
	})
}

// TestEmptyPoolRemoved: a pool whose only connection was closed dirty is
// removed after IdleTimeout too.
func TestEmptyPoolRemoved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		m := pool.New(pool.Config{IdleTimeout: time.Minute})
		defer m.Close()
		mustAcquire(t, m, key("a"), f).Release(false)
		if len(m.Pools()) != 1 {
			t.Fatal("pool gone at once")
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if len(m.Pools()) != 0 {
			t.Errorf("pools = %+v", m.Pools())
		}
	})
}

func TestMaxLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeServers{}
		m := pool.New(pool.Config{MaxLifetime: time.Minute, IdleTimeout: time.Hour})
		defer m.Close()
		a := mustAcquire(t, m, key("a"), f)
		b := mustAcquire(t, m, key("a"), f)
		b.Release(true)
		time.Sleep(61 * time.Second)
		synctest.Wait()
		if !b.Conn.(*fakeConn).closed.Load() {
			t.Error("idle connection past MaxLifetime not closed by the janitor")
		}
		a.Release(true) // past its lifetime: closed
		if !a.Conn.(*fakeConn).closed.Load() {
			t.Error("released connection past MaxLifetime not closed")
		}
		if got := m.Counters().LifetimeClosed; got != 2 {
			t.Errorf("lifetime closed = %d", got)
		}
	})
}

func TestDoubleReleasePanics(t *testing.T) {
	f := &fakeServers{}
	m := pool.New(pool.Config{})
	defer m.Close()
	c := mustAcquire(t, m, key("a"), f)
	c.Release(true)
	defer func() {
		if recover() == nil {
			t.Error("second Release did not panic")
		}
	}()
	c.Release(true)
}

// TestConcurrent hammers one budget from many tenants with random holds,
// cancels and dirty releases: the budget and the ceilings hold throughout
// and everything is accounted for at the end.
func TestConcurrent(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	const budget, ceiling = 5, 3
	m := pool.New(pool.Config{MaxServerConnections: budget, MaxPerTenant: ceiling, MinPerTenant: 1})
	var held [8]atomic.Int64
	var wg sync.WaitGroup
	for tn := range 8 {
		for g := range 12 {
			wg.Go(func() {
				k := key(string(rune('a' + tn)))
				for i := range 60 {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+(g+i)%5)*time.Millisecond)
					c, err := m.Acquire(ctx, k, f.dial)
					cancel()
					if err != nil {
						if !errors.Is(err, context.DeadlineExceeded) {
							t.Error(err)
						}
						continue
					}
					if n := held[tn].Add(1); n > ceiling {
						t.Errorf("tenant %d holds %d, ceiling %d", tn, n, ceiling)
					}
					if i%3 == 0 {
						time.Sleep(100 * time.Microsecond)
					}
					held[tn].Add(-1)
					c.Release(i%7 != 0)
				}
			})
		}
	}
	wg.Wait()
	if got := f.maxLive.Load(); got > budget {
		t.Errorf("%d connections open at once, budget %d", got, budget)
	}
	s := server(m)
	if s.Waiting != 0 || s.Open != s.Idle || s.Open != int(f.live.Load()) {
		t.Errorf("server stats %+v, live %d", s, f.live.Load())
	}
	m.Close()
	if got := f.live.Load(); got != 0 {
		t.Errorf("%d connections open after Close", got)
	}
	cs := m.Counters()
	if cs.ServersOpened != cs.ServersClosed {
		t.Errorf("opened %d, closed %d", cs.ServersOpened, cs.ServersClosed)
	}
}

// TestFairnessManyTenants: with one tenant's 200 waiters queued first and
// five other tenants' one each, every small tenant is served within the
// first six releases (one round of the six waiting tenants).
func TestFairnessManyTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 1, Turn: -1})
	defer m.Close()
	held := mustAcquire(t, m, key("big"), f)
	q := newQueue(t, m, f)
	acquire, got := q.acquire, q.got
	for range 200 {
		acquire("big")
	}
	waitFor(t, "200 queued", func() bool { return server(m).Waiting == 200 })
	small := map[string]bool{}
	for i := range 5 {
		tn := "small" + strconv.Itoa(i)
		small[tn] = true
		acquire(tn)
		waitFor(t, tn+" queued", func() bool { return server(m).Waiting == 201+i })
	}
	for releases := 1; len(small) > 0; releases++ {
		if releases > 6 {
			t.Fatalf("small tenants %v not served in 6 releases", small)
		}
		held.Release(true)
		held = <-got
		delete(small, held.Key().Tenant)
	}
	q.stop()
	held.Release(true)
}
