package admin_test

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestHealthAndReadiness(t *testing.T) {
	pgtest.CheckGoroutines(t)
	// The catalog ping goes through its own pool, closed below to take the
	// catalog "down" without touching the router's.
	pingPool, err := pgxpool.New(context.Background(), pgtest.Shared(t).AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, withProxy(func(p *proxy.Config) { p.DrainTimeout = time.Minute }), withAdmin(func(a *admin.Config) {
		a.Ping = pingPool
		a.ReadyTimeout = time.Second
	}))
	defer pingPool.Close()

	if status, _ := e.call(t, "GET", "/healthz", ""); status != 200 {
		t.Fatalf("healthz: %d", status)
	}
	if status, body := e.call(t, "GET", "/readyz", ""); status != 200 {
		t.Fatalf("readyz: %d %s", status, body)
	}
	if status, _ := e.call(t, "GET", "/nowhere", ""); status != 404 {
		t.Fatalf("unknown path: %d", status)
	}
	status, body := e.call(t, "GET", "/metrics", "")
	if status != 200 || !strings.Contains(body, "pgtenant_proxy_connections_accepted_total") ||
		!strings.Contains(body, "pgtenant_resolver_cache_hits_total") {
		t.Fatalf("metrics: %d\n%s", status, body)
	}

	pingPool.Close()
	if status, body := e.call(t, "GET", "/readyz", ""); status != 503 || !strings.Contains(body, "catalog") {
		t.Fatalf("readyz with the catalog down: %d %s", status, body)
	}
	if status, _ := e.call(t, "GET", "/healthz", ""); status != 200 {
		t.Fatalf("healthz with the catalog down: %d", status)
	}
}

func TestReadyzWhileDraining(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withProxy(func(p *proxy.Config) { p.DrainTimeout = time.Minute }))
	conn, err := e.connect(t, newTenant("drain"))
	if err != nil {
		t.Fatal(err)
	}
	if status, body := e.call(t, "GET", "/readyz", ""); status != 200 {
		t.Fatalf("readyz: %d %s", status, body)
	}
	stopped := make(chan struct{})
	go func() { e.stop(); close(stopped) }()
	poll.Until(t, 10*time.Second, "readyz to say 503 once shutdown began", func() bool {
		status, body := e.call(t, "GET", "/readyz", "")
		if status == 503 && !strings.Contains(body, "draining") {
			t.Fatalf("readyz while draining: %s", body)
		}
		return status == 503
	})
	// The session still works while the router drains, and ends the drain.
	if _, err := conn.Exec(context.Background(), "SELECT 1"); err != nil {
		t.Fatalf("session while draining: %v", err)
	}
	select {
	case <-stopped:
		t.Fatal("Serve returned while a session was live")
	default:
	}
	conn.Close(context.Background())
	<-stopped
}

func TestAPIAuth(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t)
	for name, token := range map[string]string{"no token": "", "wrong token": "nope", "prefix of the token": adminToken[:5]} {
		status, body := e.call(t, "GET", "/v1/tenants", token)
		if status != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s, want 401 with an error", name, status, body)
		}
	}
	e.do(t, "GET", "/v1/tenants", 200, nil)
	// Profiles need the token too.
	for token, want := range map[string]int{"": 401, adminToken: 200} {
		req, _ := http.NewRequest("GET", e.apiURL+"/debug/pprof/goroutine?debug=1", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("pprof with token set=%v: %d, want %d", token != "", resp.StatusCode, want)
		}
	}
	// Unknown API paths are 404, but only once authenticated.
	if status, _ := e.call(t, "GET", "/v1/nothing", ""); status != 401 {
		t.Errorf("unknown API path without a token: %d, want 401", status)
	}
	e.do(t, "GET", "/v1/nothing", 404, nil)
	e.do(t, "PUT", "/v1/tenants", 405, nil)
	e.do(t, "GET", "/v1/tenants/acme/warm", 405, nil)
	e.do(t, "POST", "/v1/tenants/acme/explode", 404, nil)
	for _, bad := range []string{"Acme", "a.b", "-x", strings.Repeat("x", 60)} {
		e.do(t, "POST", "/v1/tenants/"+bad+"/warm", 400, nil)
	}
	// The API takes the proxy's tenant rule, whatever it is configured to.
	letters := startEnv(t, withProxy(func(pc *proxy.Config) { pc.Tenant.Pattern = regexp.MustCompile(`^[a-z]+$`) }))
	letters.do(t, "POST", "/v1/tenants/acme1/warm", 400, nil)

	// Without a token configured, the API is off; the rest still works.
	off := startEnv(t, withAdmin(func(a *admin.Config) { a.Token = "" }))
	if status, _ := off.call(t, "GET", "/v1/tenants", adminToken); status != 401 {
		t.Errorf("API without a configured token: %d, want 401", status)
	}
	if status, _ := off.call(t, "GET", "/v1/tenants", "Bearer"); status != 401 {
		t.Errorf("API without a configured token: %d, want 401", status)
	}
	if status, _ := off.call(t, "GET", "/healthz", ""); status != 200 {
		t.Errorf("healthz: %d", status)
	}
}

func TestAPITenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t)
	ctx := context.Background()
	a, b := newTenant("a"), newTenant("b")

	// warm creates the tenant with no client connecting.
	var warm admin.ActionResult
	body := e.do(t, "POST", "/v1/tenants/"+a+"/warm", 200, &warm)
	if warm.Via != "created" || warm.Route == nil || warm.Route.Database != "adm_"+a || e.prov.Creates() != 1 {
		t.Fatalf("warm: %s (creates %d)", body, e.prov.Creates())
	}
	ep, ok, err := e.cat.Lookup(ctx, a)
	if err != nil || !ok {
		t.Fatalf("catalog after warm: %v %v", ok, err)
	}
	assertNoSecret(t, body, ep.Password)
	e.do(t, "POST", "/v1/tenants/"+b+"/warm", 200, nil)

	// list, paged.
	var page admin.TenantList
	e.do(t, "GET", "/v1/tenants?limit=1", 200, &page)
	if len(page.Tenants) != 1 || page.Tenants[0].Tenant != a || page.Next != a {
		t.Fatalf("first page: %+v", page)
	}
	body = e.do(t, "GET", "/v1/tenants?limit=1&after="+page.Next, 200, &page)
	if len(page.Tenants) != 1 || page.Tenants[0].Tenant != b || page.Tenants[0].State != "ready" {
		t.Fatalf("second page: %s", body)
	}
	assertNoSecret(t, body, ep.Password)
	e.do(t, "GET", "/v1/tenants?limit=0", 400, nil)

	// show: route without password, cached here, live sessions here.
	conn, err := e.connect(t, a)
	if err != nil {
		t.Fatal(err)
	}
	var st admin.TenantStatus
	body = e.do(t, "GET", "/v1/tenants/"+a, 200, &st)
	if !st.InCatalog || !st.Cached || st.Blocked || len(st.Sessions) != 1 || st.Route == nil || st.Route.User != "adm_"+a {
		t.Fatalf("show: %s", body)
	}
	assertNoSecret(t, body, ep.Password)
	e.do(t, "GET", "/v1/tenants/"+newTenant("nobody"), 404, nil)

	// evict: no longer cached.
	var ev admin.ActionResult
	e.do(t, "POST", "/v1/tenants/"+a+"/evict", 200, &ev)
	if ev.Evicted == nil || !*ev.Evicted || e.res.Cached(a) {
		t.Fatalf("evict: %+v, cached %v", ev, e.res.Cached(a))
	}

	// block: the live session ends, new connections are refused, the
	// block is in the shared catalog.
	var blk admin.ActionResult
	e.do(t, "POST", "/v1/tenants/"+a+"/block", 200, &blk)
	if blk.Blocked == nil || !*blk.Blocked {
		t.Fatalf("block: %+v", blk)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); pgCode(err) != "57P01" {
		t.Fatalf("session of a blocked tenant: %v, want 57P01", err)
	}
	if _, err := e.connect(t, a); pgCode(err) != "28000" {
		t.Fatalf("connect to a blocked tenant: %v, want 28000", err)
	}
	if l, err := e.cat.BlockedList(ctx); err != nil || len(l) != 1 || l[0] != a {
		t.Fatalf("catalog block list: %v %v", l, err)
	}
	e.do(t, "GET", "/v1/tenants/"+a, 200, &st)
	if !st.Blocked {
		t.Fatal("show does not say blocked")
	}
	e.do(t, "POST", "/v1/tenants/"+a+"/warm", 409, nil)

	// unblock: connections work again.
	e.do(t, "POST", "/v1/tenants/"+a+"/unblock", 200, nil)
	if len(e.srv.Blocked()) != 0 {
		t.Fatalf("still blocked here: %v", e.srv.Blocked())
	}
	conn, err = e.connect(t, a)
	if err != nil {
		t.Fatalf("connect after unblock: %v", err)
	}

	// delete: refused without the matching confirm; then the session
	// ends, the database and the catalog row go.
	e.do(t, "DELETE", "/v1/tenants/"+a, 400, nil)
	e.do(t, "DELETE", "/v1/tenants/"+a+"?confirm="+b, 400, nil)
	if _, ok, _ := e.cat.Lookup(ctx, a); !ok {
		t.Fatal("refused delete deleted the tenant")
	}
	var del admin.ActionResult
	e.do(t, "DELETE", "/v1/tenants/"+a+"?confirm="+a, 200, &del)
	if del.Provider != "deleted" || del.Catalog != "deleted" || del.SessionsClosed == nil || *del.SessionsClosed != 1 {
		t.Fatalf("delete: %+v", del)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("session of a deleted tenant still works")
	}
	if _, ok, _ := e.cat.Lookup(ctx, a); ok || e.res.Cached(a) {
		t.Fatal("deleted tenant still in the catalog or cache")
	}
	var n int
	if err := e.catPool.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", "adm_"+a).Scan(&n); err != nil || n != 0 {
		t.Fatalf("database left after delete: %d %v", n, err)
	}
	e.do(t, "DELETE", "/v1/tenants/"+a+"?confirm="+a, 404, nil)
}
