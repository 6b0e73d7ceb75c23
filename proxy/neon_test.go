package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/neon/neontest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// neonRouter is a router on the real Neon client, against the fake Neon
// API backed by the shared test cluster: API → operations → TLS
// verify-full with SNI → SCRAM → query.
type neonRouter struct {
	addr string
	fake *neontest.Server
	logs *syncBuffer
	srv  *proxy.Server

	mu    sync.Mutex
	dials []string // the upstream addresses the router dialled
}

func startNeonRouter(t *testing.T, projects int, opts ...func(*proxy.UpstreamConfig)) *neonRouter {
	t.Helper()
	return startNeonRouterWith(t, projects, func(c *proxy.Config) {
		for _, o := range opts {
			o(&c.Upstream)
		}
	})
}

// dialed returns the upstream addresses dialled so far.
func (r *neonRouter) dialed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dials)
}

// startNeonRouterWith is startNeonRouter with opt adjusting the whole
// proxy configuration.
func startNeonRouterWith(t *testing.T, projects int, opt func(*proxy.Config)) *neonRouter {
	t.Helper()
	r := &neonRouter{}
	ctx := context.Background()
	c := pgtest.Shared(t)
	be, err := neontest.NewBackendConfig(ctx, neontest.BackendConfig{
		AdminDSN:    c.AdminDSN("postgres"),
		TemplateSQL: "CREATE TABLE app_items (id int primary key, name text)",
	})
	if err != nil {
		t.Fatal(err)
	}
	fake, err := neontest.NewServer(ctx, neontest.Config{APIKey: "napi_test", Backend: be, OpDelay: 20 * time.Millisecond})
	if err != nil {
		be.Close()
		t.Fatal(err)
	}
	var bps []neon.BranchProject
	for i := range projects {
		p, err := fake.CreateProject(ctx, fmt.Sprintf("templates-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		bps = append(bps, neon.BranchProject{ID: p.Project.ID})
	}
	prov, err := neon.New(neon.Config{
		BaseURL: fake.URL(), APIKey: "napi_test", Mode: neon.ModeBranch, Projects: bps,
		OpPollInterval: 10 * time.Millisecond, RetryDelay: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}

	catPool, err := pgxpool.New(ctx, c.AdminDSN(pgtest.CreateDB(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := catalog.ParseKey(catalogKey)
	cat, err := catalog.Open(ctx, catPool, key)
	if err != nil {
		t.Fatal(err)
	}
	res := resolver.New(resolver.Config{}, cat, prov)
	logs := &syncBuffer{}
	up := proxy.UpstreamConfig{
		TLS:           proxy.TLSVerifyFull,
		RootCAs:       fake.CAPool(),
		ForwardParams: []string{"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"},
	}
	dial := fake.Dialer()
	pcfg := proxy.Config{
		Auth:     proxy.Auth{Password: appSecret},
		Upstream: up,
		DialUpstream: func(ctx context.Context, network, addr string) (net.Conn, error) {
			r.mu.Lock()
			r.dials = append(r.dials, addr)
			r.mu.Unlock()
			return dial(ctx, network, addr)
		},
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	}
	if opt != nil {
		opt(&pcfg)
	}
	srv, err := proxy.New(pcfg, res)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = srv.Serve(sctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		res.Close()
		catPool.Close()
		prov.CloseIdleConnections()
		fake.Close()
		be.Close()
		if t.Failed() {
			t.Logf("router log:\n%s", logs.String())
		}
	})
	r.addr, r.fake, r.logs, r.srv = ln.Addr().String(), fake, logs, srv
	return r
}

func (r *neonRouter) dsn(tenant string) string {
	return "postgres://" + tenant + ":" + appSecret + "@" + r.addr + "/app?sslmode=disable&application_name=neontest"
}

func (r *neonRouter) branchCount() (n int) {
	for _, p := range r.fake.Projects() {
		n += len(r.fake.Branches(p.ID)) - 1 // minus the template (default) branch
	}
	return n
}

// TestNeonFanOut: 200 concurrent first connects across 20 new tenants make
// 20 branches (spilling over three template projects of 10 branches each),
// every session runs a query in its own tenant's branch, and a reconnect
// is served from the route cache without any API call.
func TestNeonFanOut(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startNeonRouter(t, 3)
	const tenants, perTenant = 20, 10
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	names := make([]string, tenants)
	for i := range names {
		names[i] = newTenant(fmt.Sprintf("n%02d", i))
	}
	start := make(chan struct{})
	errs := make(chan error, tenants*perTenant)
	var wg sync.WaitGroup
	for _, tenant := range names {
		for range perTenant {
			wg.Go(func() {
				<-start
				conn, err := pgx.Connect(ctx, r.dsn(tenant))
				if err != nil {
					errs <- fmt.Errorf("%s: %w", tenant, err)
					return
				}
				defer conn.Close(context.Background())
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM app_items").Scan(&n); err != nil {
					errs <- fmt.Errorf("%s: %w", tenant, err)
				}
			})
		}
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d sessions over %d new tenants in %s", tenants*perTenant, tenants, time.Since(t0))
	if n := r.branchCount(); n != tenants {
		t.Fatalf("%d tenant branches, want %d", n, tenants)
	}

	// Isolation: a row written by one tenant is not seen by another.
	a, b := names[0], names[1]
	ca, err := pgx.Connect(ctx, r.dsn(a))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	if _, err := ca.Exec(ctx, "INSERT INTO app_items VALUES (1, 'only a')"); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, r.dsn(b))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(context.Background())
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM app_items").Scan(&n); err != nil || n != 0 {
		t.Fatalf("tenant b sees %d rows (err %v)", n, err)
	}

	// A reconnect is served from the cache: no API call.
	before := len(r.fake.Requests())
	c2, err := pgx.Connect(ctx, r.dsn(a))
	if err != nil {
		t.Fatal(err)
	}
	c2.Close(context.Background())
	if after := len(r.fake.Requests()); after != before {
		t.Fatalf("a reconnect made %d API calls", after-before)
	}
}

// TestNeonPoolerParams: parameters Neon's pooler would refuse are not
// forwarded, so a client that sets one still connects.
func TestNeonPoolerParams(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startNeonRouter(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn(newTenant("params"))+"&search_path=public&timezone=Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tz string
	if err := conn.QueryRow(ctx, "SHOW timezone").Scan(&tz); err != nil || tz != "Europe/Paris" {
		t.Fatalf("timezone %q, %v", tz, err)
	}
}

// TestNeonEndpointOption: without SNI, the endpoint ID travels in
// options=endpoint=<id>, and the certificate is still verified.
func TestNeonEndpointOption(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startNeonRouter(t, 1, func(u *proxy.UpstreamConfig) { u.EndpointOption = true })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn(newTenant("nosni")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// TestNeonCancel: a cancel goes over TLS to the tenant's endpoint.
func TestNeonCancel(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startNeonRouter(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn(newTenant("cancel")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	// Cancel until it lands: the first may arrive before the query started.
	t0 := time.Now()
	for {
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if pgCode(err) != "57014" {
				t.Fatalf("cancelled query: %v, want 57014", err)
			}
			if d := time.Since(t0); d > 10*time.Second {
				t.Fatalf("cancel took %s", d)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// directOpt asks for Neon's direct (non-pooler) endpoint.
const directOpt = "&options=-c%20pgtenant.endpoint%3Ddirect"

// TestNeonDirectEndpoint: options '-c pgtenant.endpoint=direct' connects to
// the endpoint's host without -pooler, with SNI following it (the fake's
// pooler refuses search_path as a startup parameter, the compute takes
// it), on a connection of the client's own even when the router pools.
func TestNeonDirectEndpoint(t *testing.T) {
	pgtest.CheckGoroutines(t)
	m := pool.New(pool.Config{})
	t.Cleanup(m.Close)
	r := startNeonRouterWith(t, 1, func(c *proxy.Config) {
		c.Upstream.ForwardParams = nil // everything, so the pooler's check shows
		c.Pool = proxy.PoolConfig{Mode: proxy.PoolTransaction, Manager: m}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tenant := newTenant("direct")

	// The default, pooled, goes to the pooler host.
	pooled, err := pgx.Connect(ctx, r.dsn(tenant))
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Close(context.Background())
	if _, err := pooled.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	d := r.dialed()
	if len(d) == 0 || !strings.Contains(d[len(d)-1], "-pooler.") {
		t.Fatalf("pooled client dialled %v, want the -pooler host", d)
	}

	// Control: an unpooled client on the pooler host forwards search_path,
	// which the pooler refuses.
	r.srv.SetTenantPoolModes(map[string]proxy.PoolMode{tenant: proxy.PoolOff})
	if c, err := pgx.Connect(ctx, r.dsn(tenant)+"&search_path=public"); err == nil {
		c.Close(context.Background())
		t.Fatal("the fake's pooler took search_path")
	}

	n := len(r.dialed())
	conn, err := pgx.Connect(ctx, r.dsn(tenant)+"&search_path=public"+directOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	d = r.dialed()
	if len(d) != n+1 || strings.Contains(d[n], "-pooler") || !strings.Contains(d[n], ".c-2.") {
		t.Fatalf("direct client dialled %v, want one non-pooler endpoint host", d[n:])
	}
	pid := ""
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()::text").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET statement_timeout = '777ms'"); err != nil {
		t.Fatal(err)
	}
	var got, pid2 string
	if err := conn.QueryRow(ctx, "SELECT current_setting('statement_timeout'), pg_backend_pid()::text").Scan(&got, &pid2); err != nil {
		t.Fatal(err)
	}
	if got != "777ms" || pid2 != pid {
		t.Errorf("direct session: statement_timeout %q on backend %s (was %s)", got, pid2, pid)
	}
	var opts string
	if err := conn.QueryRow(ctx, "SHOW search_path").Scan(&opts); err != nil || opts != "public" {
		t.Errorf("search_path %q, %v", opts, err)
	}
	// Unpooled: the pool holds only the pooled client's server connection.
	opened := 0
	for _, p := range m.Pools() {
		opened += p.ServersActive + p.ServersIdle + p.ServersOpening
	}
	if opened != 1 {
		t.Errorf("the pool holds %d server connections, want the pooled client's 1", opened)
	}
}
