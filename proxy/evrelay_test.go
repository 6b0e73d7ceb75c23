package proxy_test

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sync/errgroup"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// fixedRoute routes every tenant to one endpoint.
type fixedRoute struct{ ep provision.Endpoint }

func (f fixedRoute) Resolve(context.Context, string) (resolver.Route, error) {
	return resolver.Route{Endpoint: f.ep, Via: resolver.ViaCache}, nil
}

func (fixedRoute) Invalidate(string) {}

// bouncerRouter is a proxy.Server (trust auth, loopback) in front of a
// PgBouncer in transaction mode in front of a database of the shared test
// cluster: many sessions, few Postgres backends.
type bouncerRouter struct {
	addr    string
	srv     *proxy.Server
	metrics *proxy.Metrics
	stop    func()
}

func startBouncerRouter(t *testing.T, maxClients int, opts ...routerOpt) *bouncerRouter {
	t.Helper()
	if _, ok := localproc.HavePgBouncer(); !ok {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("pgbouncer is not installed; CI installs it (scripts/install-deps.sh)")
		}
		t.Skip("pgbouncer is not installed (make test installs it)")
	}
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	// Not t.TempDir (0700): as root, pgbouncer runs as postgres and must
	// traverse it.
	dir, err := os.MkdirTemp("", "proxy-evrelay-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := localproc.StartPgBouncer(ctx, localproc.PgBouncerConfig{
		Dir: dir, ServerPort: c.Port(), AuthUser: c.AdminUser(), AuthPassword: c.AdminPassword(),
		PoolMode: localproc.PoolTransaction, MaxClientConn: maxClients + 10, DefaultPoolSize: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop(context.Background()) })

	m := proxy.NewMetrics(prometheus.NewRegistry())
	cfg := proxy.Config{Auth: proxy.Auth{Method: proxy.AuthTrust}, Metrics: m, HandshakeTimeout: 2 * time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := proxy.New(cfg, fixedRoute{provision.Endpoint{
		Host: "127.0.0.1", Port: b.Port(), Database: db, User: c.AdminUser(), Password: c.AdminPassword(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	br := &bouncerRouter{addr: ln.Addr().String(), srv: srv, metrics: m}
	var once sync.Once
	br.stop = func() {
		once.Do(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(br.stop)
	return br
}

func (br *bouncerRouter) dsn(tenant string) string {
	return "postgres://" + tenant + "@" + br.addr + "/app?sslmode=disable"
}

// open connects n clients, 32 at a time, closed when t ends.
func (br *bouncerRouter) open(t *testing.T, tenant string, n int) []*pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*pgconn.PgConn, n)
	var g errgroup.Group
	g.SetLimit(32)
	for i := range conns {
		g.Go(func() error {
			c, err := pgconn.Connect(ctx, br.dsn(tenant))
			conns[i] = c
			return err
		})
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(context.Background())
			}
		}
	})
	if err := g.Wait(); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return conns
}

func selectOne(c *pgconn.PgConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.Exec(ctx, "SELECT 1").ReadAll()
	return err
}

// relayModes are the sessions the event relay holds without a goroutine:
// unpooled plaintext ones, and pooled ones in transaction mode (between
// transactions).
func relayModes(t *testing.T) map[string]func() []routerOpt {
	return map[string]func() []routerOpt{
		"unpooled": func() []routerOpt { return nil },
		"pooled-transaction": func() []routerOpt {
			opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{})
			return []routerOpt{opt}
		},
	}
}

// TestIdleSessionsHoldNoGoroutine holds 5,000 idle sessions (300 under
// the race detector) through the router (issue 15), unpooled and pooled:
// the router's goroutines must not grow with them, nor stay grown after
// the sessions ran a query. (The test process holds 3 descriptors per
// unpooled session: client, and the router's two.)
func TestIdleSessionsHoldNoGoroutine(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 sessions: not in -short")
	}
	pgtest.CheckGoroutines(t)
	for name, opts := range relayModes(t) {
		t.Run(name, func(t *testing.T) { testIdleHoldNoGoroutine(t, opts()...) })
	}
}

func testIdleHoldNoGoroutine(t *testing.T, opts ...routerOpt) {
	n := 5000
	if raceEnabled {
		// 5,000 logins under the race detector take minutes on a small
		// machine: fewer sessions, still far more than the goroutines a
		// few could leave (the goroutine relay held two per session).
		n = 300
	}
	br := startBouncerRouter(t, n, opts...)
	tenant := newTenant("idle")
	warm := br.open(t, tenant, 1) // the poller and the pools are up
	if err := selectOne(warm[0]); err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		runtime.GC()
		return runtime.NumGoroutine()
	}
	before := settle()
	conns := br.open(t, tenant, n)
	// Handshake goroutines end a moment after their client is greeted.
	var held int
	poll.Until(t, time.Minute, "the handshakes' goroutines to end", func() bool {
		held = settle()
		return held-before < min(100, n/10)
	})
	t.Logf("goroutines: %d before, %d with %d more sessions held", before, held, n)
	if got := len(br.srv.Sessions("")); got != n+1 {
		t.Fatalf("Sessions = %d, want %d", got, n+1)
	}
	// Every session still works, and parks again after its query (once
	// it has waited hotFor for more).
	for i := 0; i < n; i += 97 {
		if err := selectOne(conns[i]); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	poll.Until(t, time.Minute, "the sessions that ran a query to park again", func() bool {
		return settle()-before < min(100, n/10)
	})
	for _, c := range conns {
		_ = c.Close(context.Background())
	}
	poll.Until(t, time.Minute, "the sessions to end", func() bool { return len(br.srv.Sessions("")) == 1 })
	if got := testutil.ToFloat64(br.metrics.ConnectionsActive); got != 1 {
		t.Errorf("ConnectionsActive = %v, want 1", got)
	}
}

// TestParkedSessionsKilled ends idle (parked) sessions with CloseSessions,
// unpooled and pooled: each client is told why, each session ends once,
// and no goroutine is left behind.
func TestParkedSessionsKilled(t *testing.T) {
	pgtest.CheckGoroutines(t)
	for name, opts := range relayModes(t) {
		t.Run(name, func(t *testing.T) {
			br := startBouncerRouter(t, 50, opts()...)
			tenant := newTenant("kill")
			conns := br.open(t, tenant, 20)
			if n := br.srv.CloseSessions(tenant, "57P01", "terminating connection: tenant blocked"); n != 20 {
				t.Fatalf("CloseSessions = %d", n)
			}
			for i, c := range conns {
				err := selectOne(c)
				if pgCode(err) != "57P01" {
					t.Fatalf("session %d after the kill: %v, want 57P01", i, err)
				}
			}
			poll.Until(t, time.Minute, "the sessions to end", func() bool { return len(br.srv.Sessions("")) == 0 })
			// Ended exactly once each: the gauge back at zero, not below.
			if got := testutil.ToFloat64(br.metrics.ConnectionsActive); got != 0 {
				t.Errorf("ConnectionsActive = %v, want 0", got)
			}
			if got := testutil.ToFloat64(br.metrics.ConnectionsFinished.WithLabelValues(proxy.OutcomeKilled)); got != 20 {
				t.Errorf("finished killed = %v, want 20", got)
			}
		})
	}
}

// TestSessionEndsOnce ends sessions the ways they end (the client hangs
// up, the upstream goes away, a kill while a query runs) and checks that
// each session's end ran exactly once: the active gauge back at zero, not
// below.
func TestSessionEndsOnce(t *testing.T) {
	pgtest.CheckGoroutines(t)
	m := proxy.NewMetrics(prometheus.NewRegistry())
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.Metrics = m })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, r.cluster.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	a, b := newTenant("once"), newTenant("once")

	// The client hangs up.
	c1 := r.connect(t, a)
	_ = c1.Close(ctx)
	// The upstream goes away.
	c2 := r.connect(t, a)
	var pid uint32
	if err := c2.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	// Killed while a query runs: the direction toward the client is
	// parked, waiting for the answer.
	c3 := r.connect(t, b)
	errc := make(chan error, 1)
	go func() { _, err := c3.Exec(ctx, "SELECT pg_sleep(0.5)"); errc <- err }()
	poll.Until(t, 10*time.Second, "the query to run", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(0.5)' AND state = 'active'").Scan(&n)
		return n == 1
	})
	if n := r.srv.CloseSessions(b, "57P01", "terminating connection due to administrator command"); n != 1 {
		t.Fatalf("CloseSessions = %d", n)
	}
	if err := <-errc; pgCode(err) != "57P01" {
		t.Errorf("killed mid-query: %v, want 57P01", err)
	}
	poll.Until(t, 10*time.Second, "the sessions to end", func() bool { return len(r.srv.Sessions("")) == 0 })
	poll.Until(t, 10*time.Second, "the connections to be counted closed", func() bool {
		return testutil.ToFloat64(m.ConnectionsActive) <= 0
	})
	if got := testutil.ToFloat64(m.ConnectionsActive); got != 0 {
		t.Errorf("ConnectionsActive = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.ConnectionsAccepted); got != 3 {
		t.Errorf("ConnectionsAccepted = %v, want 3", got)
	}
}

// TestPipelinedBatchBothWays sends a batch larger than the sockets'
// buffers while the server answers it: the two directions must move at
// once (a relay that alternated between them would deadlock).
func TestPipelinedBatchBothWays(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	conn := r.connect(t, newTenant("pipe"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const queries, size = 2000, 8 << 10 // 16 MiB each way
	arg := []byte(strings.Repeat("x", size))
	b := &pgconn.Batch{}
	for range queries {
		b.ExecParams("SELECT $1::text", [][]byte{arg}, nil, nil, nil)
	}
	res, err := conn.PgConn().ExecBatch(ctx, b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != queries {
		t.Fatalf("%d results, want %d", len(res), queries)
	}
	for i, rr := range res {
		if rr.Err != nil || len(rr.Rows) != 1 || len(rr.Rows[0][0]) != size {
			t.Fatalf("result %d: %v", i, rr.Err)
		}
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the batch: %d, %v", one, err)
	}
}

// TestColdSessions: idle sessions go cold (their sockets held as bare
// descriptors), and a cold session works as any other: queries, large
// results, a kill, the client hanging up. Each warm-up and each cooling
// shows in SessionsCold.
func TestColdSessions(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event relay is Linux's")
	}
	pgtest.CheckGoroutines(t)
	br := startBouncerRouter(t, 50)
	cold := func() int { return int(testutil.ToFloat64(br.metrics.SessionsCold)) }
	tenant := newTenant("cold")
	conns := br.open(t, tenant, 20)
	poll.Until(t, time.Minute, "the idle sessions to go cold", func() bool { return cold() == 20 })

	// A query warms its session up; it cools again after hotFor.
	for i, c := range conns[:10] {
		if err := selectOne(c); err != nil {
			t.Fatalf("session %d, cold: %v", i, err)
		}
	}
	if n := cold(); n > 10 {
		t.Fatalf("SessionsCold = %d after queries on 10 of 20, want <= 10", n)
	}
	poll.Until(t, time.Minute, "the sessions to go cold again", func() bool { return cold() == 20 })
	// Much more than a socket buffer, both ways, on a cold session.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	big := strings.Repeat("x", 1<<20)
	res := conns[3].ExecParams(ctx, "SELECT length($1::text), count(*) FROM generate_series(1, 50000)", [][]byte{[]byte(big)}, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "1048576" || string(res.Rows[0][1]) != "50000" {
		t.Fatalf("large exchange on a cold session: %v %q", res.Err, res.Rows)
	}
	rows := conns[4].ExecParams(ctx, "SELECT g FROM generate_series(1, 100000) g", nil, nil, nil, nil).Read()
	if rows.Err != nil || len(rows.Rows) != 100000 {
		t.Fatalf("large result on a cold session: %v, %d rows", rows.Err, len(rows.Rows))
	}
	poll.Until(t, time.Minute, "the sessions to go cold again", func() bool { return cold() == 20 })

	// A client that hangs up while its session is cold ends the session.
	_ = conns[0].Close(ctx)
	poll.Until(t, time.Minute, "the hung-up session to end", func() bool { return len(br.srv.Sessions("")) == 19 })
	// A kill reaches cold sessions: each client is told why.
	if n := br.srv.CloseSessions(tenant, "57P01", "terminating connection: tenant blocked"); n != 19 {
		t.Fatalf("CloseSessions = %d, want 19", n)
	}
	for i, c := range conns[1:] {
		if err := selectOne(c); pgCode(err) != "57P01" {
			t.Fatalf("session %d after the kill: %v, want 57P01", i+1, err)
		}
	}
	poll.Until(t, time.Minute, "the sessions to end", func() bool { return len(br.srv.Sessions("")) == 0 })
	if n := cold(); n != 0 {
		t.Errorf("SessionsCold = %d with no session left", n)
	}
	if got := testutil.ToFloat64(br.metrics.ConnectionsActive); got != 0 {
		t.Errorf("ConnectionsActive = %v, want 0", got)
	}
}
