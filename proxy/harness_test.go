package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const appSecret = "app-s3cret-for-tests"

// countingProvider is the real local provider, counting Create calls.
type countingProvider struct {
	*local.Provider
	creates atomic.Int32
}

func (p *countingProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.creates.Add(1)
	return p.Provider.Create(ctx, tenant)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// router is a running proxy in front of the shared test cluster, with its
// own catalog database.
type router struct {
	addr    string
	cluster *localproc.Cluster
	prov    *countingProvider
	cat     *catalog.Catalog
	res     *resolver.Resolver
	logs    *syncBuffer
	srv     *proxy.Server
	stop    func()
}

type routerOpt func(*proxy.Config)

// catalogDB lets a test restart a router on the same catalog.
type catalogDB struct{ name string }

func newCatalogDB(t testing.TB) catalogDB {
	return catalogDB{name: pgtest.CreateDB(t, pgtest.Shared(t))}
}

var catalogKey = catalog.NewKey()

// startRouter starts a router (router.New: the same assembly as pgtenant
// serve) on 127.0.0.1:0 with the local provider on the shared test cluster,
// and stops it in t.Cleanup. The file's limits are off and the drain is
// immediate, as in a zero proxy.Config; opts adjust the proxy's
// configuration.
func startRouter(t testing.TB, db catalogDB, opts ...routerOpt) *router {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()

	admin, err := pgxpool.New(ctx, c.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	prov := &countingProvider{Provider: local.New(local.Config{}, admin)}
	if _, err := prov.EnsureTemplate(ctx, "CREATE TABLE IF NOT EXISTS app_items (id int primary key, name text)"); err != nil {
		t.Fatal(err)
	}
	cfg := pgrouter.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = appSecret
	cfg.Catalog.Key = catalogKey
	cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
	cfg.DrainTimeout = 0
	cfg.Limits.MaxHandshakes = 0
	cfg.Limits.AuthBackoff.Threshold = 0
	cfg.Limits.CancelRate = 0
	cfg.Admin.BlockedRefresh = 0

	logs := &syncBuffer{}
	rt, err := pgrouter.New(ctx, cfg, pgrouter.Options{
		Log:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Upstream: &pgrouter.Upstream{Provider: prov, CatalogDSN: c.AdminDSN(db.name), Close: admin.Close},
		ProxyHook: func(pc *proxy.Config) {
			for _, o := range opts {
				o(pc)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Serve(sctx) }()
	r := &router{addr: rt.Addr().String(), cluster: c, prov: prov, cat: rt.Catalog(), res: rt.Resolver(), logs: logs, srv: rt.Proxy()}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			if t.Failed() {
				t.Logf("router log:\n%s", logs.String())
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// dsn is the connection string a client uses for tenant.
func (r *router) dsn(tenant, password string, extra ...string) string {
	s := "postgres://" + tenant + ":" + password + "@" + r.addr + "/app?sslmode=disable"
	for _, e := range extra {
		s += "&" + e
	}
	return s
}

func (r *router) connect(t *testing.T, tenant string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn(tenant, appSecret))
	if err != nil {
		t.Fatalf("connect as %s: %v", tenant, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// newTenant returns a tenant ID no other test uses.
func newTenant(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// assertNoSecrets fails if the router's log holds a password.
func (r *router) assertNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	logs := r.logs.String()
	for _, s := range append(secrets, appSecret) {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("router log contains a secret (%q...)", s[:min(4, len(s))])
		}
	}
}

// sleepUpstream runs SELECT pg_sleep(30) on pc (an unpooled session, so
// its upstream backend stays the one pg_backend_pid() names) and returns
// once that backend runs it (pg_stat_activity); the channel gets the
// query's end.
func (r *router) sleepUpstream(t *testing.T, ctx context.Context, pc *pgconn.PgConn) <-chan error {
	t.Helper()
	res := pc.ExecParams(ctx, "SELECT pg_backend_pid()", nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	backend := res.Rows[0][0]
	done := make(chan error, 1)
	go func() {
		_, err := pc.Exec(ctx, "SELECT pg_sleep(30)").ReadAll()
		done <- err
	}()
	admin, err := pgconn.Connect(ctx, r.cluster.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	poll.Until(t, 20*time.Second, "the query to start upstream", func() bool {
		res := admin.ExecParams(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%' AND state = 'active'",
			[][]byte{backend}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return string(res.Rows[0][0]) == "1"
	})
	return done
}
