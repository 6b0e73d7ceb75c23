package admin_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	appSecret  = "app-s3cret-for-admin-tests"
	adminToken = "t0ken-for-admin-tests"
)

// countingProvider is the real local provider, counting Create calls.
type countingProvider struct {
	*local.Provider
	mu      sync.Mutex
	creates int
}

func (p *countingProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.mu.Lock()
	p.creates++
	p.mu.Unlock()
	return p.Provider.Create(ctx, tenant)
}

func (p *countingProvider) Creates() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.creates
}

// env is a real router (router.New: proxy, resolver, catalog, local
// provider on the shared test cluster, the admin listener in front).
type env struct {
	cluster *localproc.Cluster
	addr    string // the proxy
	apiURL  string // the admin listener
	client  *http.Client
	cat     *catalog.Catalog
	catPool *pgxpool.Pool // the test's own, on the catalog's database
	res     *resolver.Resolver
	srv     *proxy.Server
	prov    *countingProvider
	reg     *prometheus.Registry
	router  *pgrouter.Router
	stop    func() // stops the router (drain) and waits for it
	cancel  context.CancelFunc
}

// envOpt adjusts the router's, the proxy's or the admin API's
// configuration.
type envOpt struct {
	router func(*pgrouter.Config)
	proxy  func(*proxy.Config)
	admin  func(*admin.Config)
}

func withRouter(f func(*pgrouter.Config)) envOpt { return envOpt{router: f} }

func withProxy(f func(*proxy.Config)) envOpt { return envOpt{proxy: f} }
func withAdmin(f func(*admin.Config)) envOpt { return envOpt{admin: f} }

func startEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	adminPool, err := pgxpool.New(ctx, c.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	catDB := pgtest.CreateDB(t, c)
	catPool, err := pgxpool.New(ctx, c.AdminDSN(catDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(catPool.Close)
	prov := &countingProvider{Provider: local.New(local.Config{Prefix: "adm_"}, adminPool)}
	if _, err := prov.EnsureTemplate(ctx, ""); err != nil {
		t.Fatal(err)
	}
	cfg := pgrouter.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = appSecret
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Admin.Token = adminToken
	cfg.Admin.BlockedRefresh = 0
	cfg.DrainTimeout = 0
	cfg.Limits.MaxHandshakes = 0
	cfg.Limits.AuthBackoff.Threshold = 0
	for _, o := range opts {
		if o.router != nil {
			o.router(&cfg)
		}
	}
	rt, err := pgrouter.New(ctx, cfg, pgrouter.Options{
		Log:      discard(),
		Upstream: &pgrouter.Upstream{Provider: prov, CatalogDSN: c.AdminDSN(catDB), Close: adminPool.Close},
		ProxyHook: func(pc *proxy.Config) {
			for _, o := range opts {
				if o.proxy != nil {
					o.proxy(pc)
				}
			}
		},
		AdminHook: func(ac *admin.Config) {
			for _, o := range opts {
				if o.admin != nil {
					o.admin(ac)
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Serve(sctx) }()
	var once sync.Once
	e := &env{
		cluster: c, addr: rt.Addr().String(), apiURL: "http://" + rt.AdminAddr().String(), client: &http.Client{},
		cat: rt.Catalog(), catPool: catPool, res: rt.Resolver(), srv: rt.Proxy(), prov: prov, reg: rt.Registry(), router: rt, cancel: cancel,
	}
	e.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			e.client.CloseIdleConnections()
		})
	}
	t.Cleanup(e.stop)
	return e
}

func (e *env) dsn(tenant string) string {
	return "postgres://" + tenant + ":" + appSecret + "@" + e.addr + "/app?sslmode=disable"
}

func (e *env) connect(t *testing.T, tenant string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, e.dsn(tenant))
	if err == nil {
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
	}
	return conn, err
}

// call sends an API request with token ("" for none) and returns the
// status and the raw body, checking that the answer is JSON.
// send makes an API request with body (JSON; may be empty) and returns
// the status and the body of the answer.
func (e *env) send(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.apiURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (e *env) call(t *testing.T, method, path, token string) (int, string) {
	t.Helper()
	status, b := e.send(t, method, path, token, "")
	if path != "/metrics" && !json.Valid([]byte(b)) {
		t.Errorf("%s %s: body is not JSON: %q", method, path, b)
	}
	return status, b
}

// do is call with the admin token, decoding a 2xx body into out.
func (e *env) do(t *testing.T, method, path string, wantStatus int, out any) string {
	t.Helper()
	status, body := e.call(t, method, path, adminToken)
	if status != wantStatus {
		t.Fatalf("%s %s: %d %s, want %d", method, path, status, body, wantStatus)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(body), out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return body
}

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

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func assertNoSecret(t *testing.T, body string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(body, s) {
			t.Errorf("answer contains a secret (%q...)", s[:min(4, len(s))])
		}
	}
}
