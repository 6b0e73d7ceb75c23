package bench_test

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// TestMain runs the tests on one shared Postgres cluster (see pgtest).
func TestMain(m *testing.M) { pgtest.Main(m) }

// directDSN returns the DSN of a fresh database on the shared cluster: the
// baseline target, without {tenant}.
func directDSN(t *testing.T) string {
	t.Helper()
	c := pgtest.Shared(t)
	return c.AdminDSN(pgtest.CreateDB(t, c))
}

// wrongPasswordDSN is dsn with another password.
func wrongPasswordDSN(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "not-the-password")
	return u.String()
}

// runBench runs cfg with a generous deadline and fails t on an error.
func runBench(t *testing.T, cfg bench.Config) *bench.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.Partial {
		t.Fatal("report is partial without an interruption")
	}
	return rep
}

// scenario returns the report's i-th scenario, checking its name.
func scenario(t *testing.T, rep *bench.Report, i int, name bench.Scenario) *bench.ScenarioReport {
	t.Helper()
	if i >= len(rep.Scenarios) {
		t.Fatalf("report has %d scenarios, want at least %d", len(rep.Scenarios), i+1)
	}
	s := &rep.Scenarios[i]
	if s.Name != name {
		t.Fatalf("scenario %d is %q, want %q", i, s.Name, name)
	}
	return s
}

// result returns the result for label.
func result(t *testing.T, s *bench.ScenarioReport, label string) bench.Result {
	t.Helper()
	for _, r := range s.Results {
		if r.Target == label {
			return r
		}
	}
	t.Fatalf("%s: no result for target %q", s.Name, label)
	return bench.Result{}
}

// checkSane checks the invariants every result has.
func checkSane(t *testing.T, r bench.Result) {
	t.Helper()
	for _, l := range []struct {
		what                string
		p50, p90, p99, maxv float64
	}{
		{"connect", r.ConnectP50Ms, r.ConnectP90Ms, r.ConnectP99Ms, r.ConnectMaxMs},
		{"query", r.QueryP50Ms, r.QueryP90Ms, r.QueryP99Ms, r.QueryMaxMs},
	} {
		if l.p50 < 0 || l.p50 > l.p90 || l.p90 > l.p99 || l.p99 > l.maxv {
			t.Errorf("%s: %s percentiles out of order: p50 %v p90 %v p99 %v max %v", r.Target, l.what, l.p50, l.p90, l.p99, l.maxv)
		}
	}
	if (r.Connects > 0) != (r.ConnectMaxMs > 0) || (r.Queries > 0) != (r.QueryMaxMs > 0) {
		t.Errorf("%s: counts and latencies disagree: %+v", r.Target, r)
	}
	var sum int64
	for _, n := range r.Errors {
		sum += n
	}
	if r.Errors == nil || sum != r.ErrorsTotal {
		t.Errorf("%s: errors_total %d, errors %v", r.Target, r.ErrorsTotal, r.Errors)
	}
}

// router is pgtenant's proxy running in-process in front of the shared
// cluster, as proxy/harness_test.go builds it.
type router struct {
	addr    string
	creates atomic.Int32
}

const routerSecret = "bench-app-s3cret"

// countingProvider is the real local provider, counting Create calls.
type countingProvider struct {
	*local.Provider
	n *atomic.Int32
}

func (p countingProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.n.Add(1)
	return p.Provider.Create(ctx, tenant)
}

// startRouter starts a router on 127.0.0.1:0 with its own catalog, and
// stops it in t.Cleanup.
func startRouter(t *testing.T) *router {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	catDB := pgtest.CreateDB(t, c)
	admin, err := pgxpool.New(ctx, c.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	catPool, err := pgxpool.New(ctx, c.AdminDSN(catDB))
	if err != nil {
		t.Fatal(err)
	}
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(ctx, catPool, key)
	if err != nil {
		t.Fatal(err)
	}
	rt := &router{}
	prov := countingProvider{Provider: local.New(local.Config{}, admin), n: &rt.creates}
	if _, err := prov.EnsureTemplate(ctx, ""); err != nil {
		t.Fatal(err)
	}
	res := resolver.New(resolver.Config{}, cat, prov)
	srv, err := proxy.New(proxy.Config{
		Auth: proxy.Auth{Password: routerSecret},
		Log:  slog.New(slog.DiscardHandler),
	}, res)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = srv.Serve(sctx, ln) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("Serve: %v", serveErr)
		}
		res.Close()
		catPool.Close()
		admin.Close()
	})
	rt.addr = ln.Addr().String()
	return rt
}

// dsn is the router's DSN template: the tenant in the user name.
func (rt *router) dsn(password string) string {
	return "postgres://{tenant}:" + password + "@" + rt.addr + "/app?sslmode=disable"
}

// uniquePrefix returns a tenant prefix no other test run uses: tenants'
// databases outlive a test on the shared cluster.
func uniquePrefix(t *testing.T) string {
	return "b" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "_"
}
