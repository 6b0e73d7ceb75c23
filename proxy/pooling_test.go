package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
)

// withPool turns pooling on in mode with a Manager of cfg's limits, closed
// after the test.
func withPool(t testing.TB, mode proxy.PoolMode, cfg pool.Config) (routerOpt, *pool.Manager) {
	m := pool.New(cfg)
	t.Cleanup(m.Close)
	return func(c *proxy.Config) { c.Pool = proxy.PoolConfig{Mode: mode, Manager: m} }, m
}

// simple connects with the simple protocol, which needs no prepared
// statements.
func (r *router) simple(t *testing.T, tenant string, extra ...string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(r.dsn(tenant, appSecret, extra...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", tenant, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestPoolSessionResetsBetweenClients(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolSession, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	tenant := newTenant("psess")

	a := r.connect(t, tenant)
	pidA := queryString(t, a, "SELECT pg_backend_pid()::text")
	for _, q := range []string{"SET statement_timeout = '1234ms'", "CREATE TEMP TABLE scratch (x int)", "PREPARE p AS SELECT 1"} {
		if _, err := a.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The connection goes back to the pool once reset.
	waitIdle(t, m, 1)

	b := r.connect(t, tenant)
	if pidB := queryString(t, b, "SELECT pg_backend_pid()::text"); pidB != pidA {
		t.Errorf("second client got backend %s, want the pooled %s", pidB, pidA)
	}
	if got := queryString(t, b, "SHOW statement_timeout"); got != "0" {
		t.Errorf("statement_timeout leaked to the next client: %s", got)
	}
	if got := queryString(t, b, "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'p'"); got != "0" {
		t.Errorf("prepared statements leaked: %s", got)
	}
	if got := queryString(t, b, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'scratch'"); got != "0" {
		t.Errorf("temp table leaked: %s", got)
	}
}

// waitIdle waits until m holds n idle server connections.
func waitIdle(t *testing.T, m *pool.Manager, n int) {
	t.Helper()
	poll.Until(t, 10*time.Second, fmt.Sprintf("the pool to hold %d idle connections", n), func() bool {
		idle := 0
		for _, p := range m.Pools() {
			idle += p.ServersIdle
		}
		return idle == n
	})
}

func TestPoolTransactionSharesConnections(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{MaxPerTenant: 2})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenant := newTenant("ptx")
	const clients = 8
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = r.simple(t, tenant)
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Go(func() {
			for j := range 20 {
				var got int
				if err := c.QueryRow(ctx, fmt.Sprintf("SELECT %d + %d", i, j)).Scan(&got); err != nil || got != i+j {
					errs <- fmt.Errorf("client %d query %d: %d, %v", i, j, got, err)
					return
				}
				tx, err := c.Begin(ctx)
				if err == nil {
					_, err = tx.Exec(ctx, "SELECT txid_current()")
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					errs <- fmt.Errorf("client %d transaction %d: %v", i, j, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Eight clients, never more than two server connections.
	for _, s := range m.Servers() {
		if s.Open > 2 {
			t.Errorf("server %s: %d connections open, want at most the tenant's 2", s.Server, s.Open)
		}
	}
	if n := m.Counters().ServersOpened; n > 2 {
		t.Errorf("%d server connections opened for %d clients, want at most 2", n, clients)
	}
}

func TestPoolTransactionSettingsFollowTheClient(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{MaxPerTenant: 1})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	tenant := newTenant("pset")
	// One server connection: both clients land on the same one in turn.
	tokyo := r.simple(t, tenant, "timezone=Asia/Tokyo", "application_name=tokyo", "options=-c%20statement_timeout%3D4321")
	plain := r.simple(t, tenant)
	defaultTZ := queryString(t, plain, "SHOW timezone")
	for range 3 {
		if got := queryString(t, tokyo, "SHOW timezone"); got != "Asia/Tokyo" {
			t.Errorf("client's TimeZone = %q, want Asia/Tokyo", got)
		}
		if got := queryString(t, tokyo, "SELECT current_setting('application_name') || ' ' || current_setting('statement_timeout')"); got != "tokyo 4321ms" {
			t.Errorf("client's settings = %q", got)
		}
		if got := queryString(t, plain, "SHOW timezone"); got != defaultTZ {
			t.Errorf("the other client's TimeZone = %q, want %q: settings leaked", got, defaultTZ)
		}
		if got := queryString(t, plain, "SHOW application_name"); got == "tokyo" {
			t.Error("application_name leaked to the other client")
		}
	}
	// A reported setting the client changes follows it.
	if _, err := plain.Exec(ctx, "SET TimeZone = 'America/Lima'"); err != nil {
		t.Fatal(err)
	}
	_ = queryString(t, tokyo, "SELECT 1")
	if got := queryString(t, plain, "SHOW timezone"); got != "America/Lima" {
		t.Errorf("after SET, TimeZone = %q, want America/Lima", got)
	}
	if got := plain.PgConn().ParameterStatus("TimeZone"); got != "America/Lima" {
		t.Errorf("client's ParameterStatus TimeZone = %q", got)
	}
	// A bad setting is the client's error, as on a direct connection.
	_, err := pgx.Connect(ctx, r.dsn(tenant, appSecret, "timezone=Nowhere/Atlantis"))
	if pgCode(err) != "22023" {
		t.Errorf("bad TimeZone: %v, want 22023", err)
	}
}

func TestPoolClientLeavingMidTransaction(t *testing.T) {
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, m := withPool(t, mode, pool.Config{MaxPerTenant: 1})
			r := startRouter(t, newCatalogDB(t), opt)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			tenant := newTenant("pleave")
			a := r.simple(t, tenant)
			for _, q := range []string{"BEGIN", "SELECT txid_current()", "LOCK TABLE app_items IN ACCESS EXCLUSIVE MODE"} {
				if _, err := a.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			// The client vanishes without a Terminate.
			_ = a.PgConn().Conn().Close()
			waitIdle(t, m, 1)
			b := r.simple(t, tenant)
			if got := queryString(t, b, "SELECT coalesce(txid_current_if_assigned()::text, 'none')"); got != "none" {
				t.Errorf("next client is inside the old transaction (xid %s)", got)
			}
			if _, err := b.Exec(ctx, "SET lock_timeout = '2s'; LOCK TABLE app_items IN ACCESS EXCLUSIVE MODE"); err != nil {
				t.Errorf("the old transaction's lock is still held: %v", err)
			}
			if n := m.Counters().ServersOpened; n != 1 {
				t.Errorf("%d server connections opened, want the one rolled back and reused", n)
			}
		})
	}
}

// TestPoolWaitEnds: with the budget's one connection held, another client
// queues; its wait ends after pool.queue_timeout with 53300 naming the
// budget, or after connect_timeout if that is shorter with 57P03 naming it,
// never with a closed connection or a handshake error. Freed, the budget
// serves a new client.
func TestPoolWaitEnds(t *testing.T) {
	for _, tc := range []struct {
		name           string
		queueTimeout   time.Duration
		connectTimeout time.Duration // 0: the default
		code, message  string
	}{
		{"queue_timeout", 300 * time.Millisecond, 0, "53300", "all 1 server connections"},
		// connect_timeout long enough for the tenant's creation at the first login.
		{"connect_timeout", time.Minute, 3 * time.Second, "57P03", "connect_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{MaxServerConnections: 1, QueueTimeout: tc.queueTimeout})
			r := startRouter(t, newCatalogDB(t), opt, func(c *proxy.Config) {
				if tc.connectTimeout > 0 {
					c.ConnectTimeout = tc.connectTimeout
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			tenant := newTenant("pwait")
			holder, waiter := r.simple(t, tenant), r.simple(t, tenant)
			tx, err := holder.Begin(ctx) // the budget's one connection, held
			if err != nil {
				t.Fatal(err)
			}
			_, err = waiter.Exec(ctx, "SELECT 1")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != tc.code || !strings.Contains(pgErr.Message, tc.message) {
				t.Fatalf("query waiting: %v, want %s naming %q", err, tc.code, tc.message)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if got := queryString(t, r.simple(t, tenant), "SELECT 'ok'"); got != "ok" {
				t.Fatal(got)
			}
		})
	}
}

func TestPoolCancel(t *testing.T) {
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, _ := withPool(t, mode, pool.Config{})
			r := startRouter(t, newCatalogDB(t), opt)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := r.simple(t, newTenant("pcancel"))
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(ctx, "SELECT pg_sleep(30)")
				errc <- err
			}()
			var err error
			select {
			case err = <-errc:
				t.Fatalf("query ended before the cancel: %v", err)
			case <-time.After(300 * time.Millisecond): // time to start; a cancel too early is ignored
			}
			if err := c.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err = <-errc; pgCode(err) != "57014" {
				t.Fatalf("cancelled query: %v, want 57014", err)
			}
		})
	}
}

// In transaction mode a client's cancel reaches the server connection it
// holds now, also when it held that one before, then another.
func TestPoolCancelAcrossConnections(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenant := newTenant("pcancel2")
	a, b := r.simple(t, tenant), r.simple(t, tenant)
	// A client hears its ReadyForQuery before the router gives the
	// connection back: the next borrow must wait for that to take it.
	allIdle := func() {
		poll.Until(t, 10*time.Second, "the pool's connections given back", func() bool {
			for _, s := range m.Servers() {
				if s.Active > 0 {
					return false
				}
			}
			return true
		})
	}
	x := queryString(t, a, "SELECT pg_backend_pid()::text")
	allIdle()
	if _, err := b.Exec(ctx, "BEGIN"); err != nil { // b holds x
		t.Fatal(err)
	}
	if got := queryString(t, b, "SELECT pg_backend_pid()::text"); got != x {
		t.Fatalf("b is on %s, not on the idle %s", got, x)
	}
	if y := queryString(t, a, "SELECT pg_backend_pid()::text"); y == x {
		t.Fatalf("a is on %s, held by b", y)
	}
	if _, err := b.Exec(ctx, "COMMIT"); err != nil { // x is idle again, the last given back
		t.Fatal(err)
	}
	allIdle()
	errc := make(chan error, 1)
	go func() {
		_, err := a.Exec(ctx, "SELECT pg_sleep(20) FROM (SELECT 1) s WHERE pg_backend_pid() = "+x)
		errc <- err
	}()
	admin, err := pgx.Connect(ctx, r.cluster.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	poll.Until(t, 20*time.Second, "the query to run on "+x, func() bool {
		select {
		case err := <-errc:
			t.Fatalf("query ended before the cancel: %v", err)
		default:
		}
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int AND state = 'active' AND query LIKE '%pg_sleep%'", x).Scan(&n)
		return n == 1
	})
	start := time.Now()
	if err := a.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; pgCode(err) != "57014" {
		t.Fatalf("cancelled query: %v after %v, want 57014 (was a on %s?)", err, time.Since(start), x)
	}
}

func TestPoolOptionChoosesSessionMode(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	c := r.simple(t, newTenant("popt"), "options=-c%20pgtenant.pool_mode%3Dsession")
	// Session state survives between statements, as on a connection of its own.
	if _, err := c.Exec(ctx, "SET statement_timeout = '777ms'"); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, c, "SHOW statement_timeout"); got != "777ms" {
		t.Errorf("statement_timeout = %q in session mode", got)
	}
	_, err := pgx.Connect(ctx, r.dsn(newTenant("popt"), appSecret, "options=-c%20pgtenant.pool_mode%3Dstatement"))
	if pgCode(err) != "22023" {
		t.Errorf("unknown pool mode: %v, want 22023", err)
	}
}

func TestPoolKilledSessions(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenant := newTenant("pkill")
	idle, busy := r.simple(t, tenant), r.simple(t, tenant)
	tx, err := busy.Begin(ctx) // holds a server connection
	if err != nil {
		t.Fatal(err)
	}
	if n := r.srv.CloseSessions(tenant, "57P01", "terminating connection: test"); n != 2 {
		t.Fatalf("CloseSessions = %d, want 2", n)
	}
	if _, err := idle.Exec(ctx, "SELECT 1"); pgCode(err) != "57P01" {
		t.Errorf("idle pooled client after kill: %v, want 57P01", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "57P01" {
		t.Errorf("client in a transaction after kill: %v, want 57P01", err)
	}
	// The server connection is rolled back and kept.
	waitIdle(t, m, 1)
}

// TestPoolRawTerminate checks that a pooled client's Terminate ends its
// session without closing the server connection it held.
func TestPoolRawTerminate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolSession, pool.Config{})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	tenant := newTenant("pterm")
	for range 3 {
		c := r.simple(t, tenant)
		if err := c.Close(ctx); err != nil { // sends Terminate
			t.Fatal(err)
		}
		waitIdle(t, m, 1)
	}
	if n := m.Counters().ServersOpened; n != 1 {
		t.Errorf("%d server connections opened for three clients in turn, want 1", n)
	}
}

func TestPoolTransactionPreparedStatements(t *testing.T) {
	modes := map[string]pgx.QueryExecMode{
		"cache_statement": pgx.QueryExecModeCacheStatement, "cache_describe": pgx.QueryExecModeCacheDescribe,
		"describe_exec": pgx.QueryExecModeDescribeExec, "exec": pgx.QueryExecModeExec, "simple": pgx.QueryExecModeSimpleProtocol,
	}
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, m := withPool(t, proxy.PoolTransaction, pool.Config{MaxPerTenant: 2})
			r := startRouter(t, newCatalogDB(t), opt)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			tenant := newTenant("pprep")
			const clients = 5
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				cfg, err := pgx.ParseConfig(r.dsn(tenant, appSecret))
				if err != nil {
					t.Fatal(err)
				}
				cfg.DefaultQueryExecMode = mode
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close(context.Background()) })
				wg.Go(func() {
					for j := range 15 {
						var sum int
						var s string
						// Several statements, each over several transactions
						// and so several server connections.
						if err := c.QueryRow(ctx, "SELECT $1::int + $2::int", i, j).Scan(&sum); err != nil || sum != i+j {
							errs <- fmt.Errorf("client %d, %d: sum %d, %v", i, j, sum, err)
							return
						}
						if err := c.QueryRow(ctx, "SELECT $1::text || '-' || current_database()", fmt.Sprint(i)).Scan(&s); err != nil || !strings.HasPrefix(s, fmt.Sprint(i)+"-") {
							errs <- fmt.Errorf("client %d, %d: %q, %v", i, j, s, err)
							return
						}
						b := &pgx.Batch{}
						b.Queue("SELECT $1::int * 2", j)
						b.Queue("SELECT $1::int * 3", j)
						br := c.SendBatch(ctx, b)
						var x, y int
						err1 := br.QueryRow().Scan(&x)
						err2 := br.QueryRow().Scan(&y)
						err3 := br.Close()
						if err := errors.Join(err1, err2, err3); err != nil || x != 2*j || y != 3*j {
							errs <- fmt.Errorf("client %d, %d: batch %d %d, %v", i, j, x, y, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := m.Counters().ServersOpened; n > 2 {
				t.Errorf("%d server connections for %d clients, want at most 2", n, clients)
			}
		})
	}
}

func TestPoolTransactionPrepareAndDeallocate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{MaxPerTenant: 1})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx := context.Background()
	tenant := newTenant("pdealloc")
	a, b := r.connect(t, tenant), r.connect(t, tenant)
	// The same name in two clients, for different statements.
	if _, err := a.Prepare(ctx, "q", "SELECT 'a:' || $1::text"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx, "q", "SELECT 'b:' || $1::text"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		for c, want := range map[*pgx.Conn]string{a: "a:1", b: "b:1"} {
			var got string
			if err := c.QueryRow(ctx, "q", "1").Scan(&got); err != nil || got != want {
				t.Errorf("statement q = %q, %v; want %q", got, err, want)
			}
		}
	}
	// Deallocate (Close) forgets the client's name only.
	if err := a.Deallocate(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "q", "1"); err == nil {
		t.Error("a deallocated statement still runs")
	}
	var got string
	if err := b.QueryRow(ctx, "q", "2").Scan(&got); err != nil || got != "b:2" {
		t.Errorf("other client's q after a's Deallocate = %q, %v", got, err)
	}
	// A statement that does not parse fails as on a direct connection.
	if _, err := a.Prepare(ctx, "bad", "SELEC 1"); pgCode(err) != "42601" {
		t.Errorf("bad statement: %v, want 42601", err)
	}
	if _, err := a.Prepare(ctx, "q", "SELECT 'again:' || $1::text"); err != nil {
		t.Fatal(err)
	}
	if err := a.QueryRow(ctx, "q", "3").Scan(&got); err != nil || got != "again:3" {
		t.Errorf("re-prepared q = %q, %v", got, err)
	}
}

func TestPoolPsql(t *testing.T) {
	psql := psqlPath(t)
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, m := withPool(t, mode, pool.Config{MaxPerTenant: 1})
			r := startRouter(t, newCatalogDB(t), opt)
			tenant := newTenant("ppsql")
			script := `BEGIN;
INSERT INTO app_items VALUES (1, 'one');
SELECT name AS item FROM app_items ORDER BY id DESC LIMIT 1 \gset
COMMIT;
SELECT :'item' || '/' || current_setting('application_name');
SELECT count(*) FROM app_items;`
			for i := range 3 { // one server connection, in turn
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
					"postgres://"+tenant+"@"+r.addr+"/app?sslmode=disable&application_name=psql"+fmt.Sprint(i))
				cmd.Stdin = strings.NewReader(strings.Replace(script, "VALUES (1,", fmt.Sprintf("VALUES (%d,", 10+i), 1))
				cmd.Env = append(os.Environ(), "PGPASSWORD="+appSecret)
				out, err := cmd.CombinedOutput()
				cancel()
				want := fmt.Sprintf("one/psql%d\n%d", i, i+1)
				if err != nil || !strings.Contains(string(out), want) {
					t.Fatalf("psql run %d: %q, %v; want %q", i, out, err, want)
				}
			}
			if n := m.Counters().ServersOpened; n != 1 {
				t.Errorf("%d server connections for three psql runs in turn, want 1", n)
			}
		})
	}
}

// TestPoolTransactionGreetsWithoutAServer checks that a transaction-mode
// client that asks what an earlier one asked logs in while every server
// connection is busy, and waits only for its first transaction.
func TestPoolTransactionGreetsWithoutAServer(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{MaxServerConnections: 1})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenant := newTenant("pgreet")
	holder := r.simple(t, tenant)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	late := r.simple(t, tenant) // greeted while the one connection is in a transaction
	if got := late.PgConn().ParameterStatus("server_version"); got == "" {
		t.Error("greeting without server_version")
	}
	done := make(chan string, 1)
	go func() {
		var s string
		_ = late.QueryRow(ctx, "SELECT 'served'").Scan(&s)
		done <- s
	}()
	poll.Until(t, 10*time.Second, "the late client to queue", func() bool {
		for _, p := range m.Pools() {
			if p.ClientsWaiting > 0 {
				return true
			}
		}
		return false
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != "served" {
		t.Errorf("late client's query: %q", got)
	}
	if n := m.Counters().ServersOpened; n != 1 {
		t.Errorf("%d server connections opened, want 1", n)
	}
}

// TestPoolDrain checks that a drain ends pooled sessions, held and between
// transactions, with 57P01 and lets Serve return.
func TestPoolDrain(t *testing.T) {
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			opt, _ := withPool(t, mode, pool.Config{})
			r := startRouter(t, newCatalogDB(t), opt, func(c *proxy.Config) { c.DrainTimeout = 200 * time.Millisecond })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := r.simple(t, newTenant("pdrain"))
			stopped := make(chan struct{})
			go func() { r.stop(); close(stopped) }()
			poll.Until(t, 10*time.Second, "the router to drain", r.srv.Draining)
			select {
			case <-stopped:
			case <-time.After(30 * time.Second):
				t.Fatal("Serve did not return after the drain")
			}
			if _, err := c.Exec(ctx, "SELECT 1"); pgCode(err) != "57P01" {
				t.Errorf("pooled session after the drain: %v, want 57P01", err)
			}
		})
	}
}

// TestPoolReplacesDeadServer checks that a pooled connection whose server
// went away while it sat idle is found out before it is lent, and the
// client's next transaction runs on a new one.
func TestPoolReplacesDeadServer(t *testing.T) {
	pgtest.CheckGoroutines(t)
	m := pool.New(pool.Config{})
	t.Cleanup(m.Close)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) {
		c.Pool = proxy.PoolConfig{Mode: proxy.PoolTransaction, Manager: m, ServerCheckDelay: time.Nanosecond}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := r.simple(t, newTenant("pdead"))
	pid := queryString(t, c, "SELECT pg_backend_pid()::text")
	admin, err := pgx.Connect(ctx, r.cluster.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1::int)", pid); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the backend to exit", func() bool {
		var n int
		_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", pid).Scan(&n)
		return n == 0
	})
	if got := queryString(t, c, "SELECT pg_backend_pid()::text"); got == pid {
		t.Errorf("still on the terminated backend %s", pid)
	}
	if n := m.Counters().ServersOpened; n != 2 {
		t.Errorf("%d server connections opened, want 2 (the dead one replaced)", n)
	}
}

// TestPoolTransactionCopy checks COPY in both directions in transaction
// mode, where the server waits for the client in the middle of a statement.
func TestPoolTransactionCopy(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, _ := withPool(t, proxy.PoolTransaction, pool.Config{MaxPerTenant: 1})
	r := startRouter(t, newCatalogDB(t), opt)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := r.simple(t, newTenant("pcopy"))
	tag, err := c.PgConn().CopyFrom(ctx, strings.NewReader("1\tone\n2\ttwo\n3\tthree\n"), "COPY app_items FROM STDIN")
	if err != nil || tag.RowsAffected() != 3 {
		t.Fatalf("COPY FROM: %v, %v", tag, err)
	}
	var out strings.Builder
	if _, err := c.PgConn().CopyTo(ctx, &out, "COPY (SELECT name FROM app_items ORDER BY id) TO STDOUT"); err != nil || out.String() != "one\ntwo\nthree\n" {
		t.Fatalf("COPY TO: %q, %v", out.String(), err)
	}
	if got := queryString(t, c, "SELECT count(*)::text FROM app_items"); got != "3" {
		t.Errorf("rows after COPY: %s", got)
	}
}

// TestPoolTransactionGreetingShared checks that a tenant's clients
// connecting at once in transaction mode share one server login for their
// greeting, instead of each logging in (here: its first clients, when the
// tenant has no server connection yet).
func TestPoolTransactionGreetingShared(t *testing.T) {
	pgtest.CheckGoroutines(t)
	opt, m := withPool(t, proxy.PoolTransaction, pool.Config{MaxServerConnections: 20})
	r := startRouter(t, newCatalogDB(t), opt)
	tenant := newTenant("pgshare")
	opened := m.Counters().ServersOpened
	const clients = 10
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range clients {
		wg.Go(func() {
			<-start
			r.simple(t, tenant)
		})
	}
	close(start)
	wg.Wait()
	if n := m.Counters().ServersOpened - opened; n != 1 {
		t.Errorf("%d server logins for %d clients connecting at once, want 1", n, clients)
	}
}
