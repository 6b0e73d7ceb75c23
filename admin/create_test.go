package admin_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

// Tests of tenant.create, tenant.max_tenants and tenant.creates_per_minute:
// a real router, real pgx clients, the admin API.

func withCreate(mode string, maxTenants, perMinute int) envOpt {
	return withRouter(func(c *pgrouter.Config) {
		c.Tenant.Create, c.Tenant.MaxTenants, c.Tenant.CreatesPerMinute = mode, maxTenants, perMinute
	})
}

// pgErrOf returns the server error of a failed connect, failing the test
// when there is none.
func pgErrOf(t *testing.T, err error) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("connect: %v, want a server error", err)
	}
	return pgErr
}

// connectWith connects as tenant with password.
func (e *env) connectWith(t *testing.T, tenant, password string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":"+password+"@"+e.addr+"/app?sslmode=disable")
	if err == nil {
		_ = conn.Close(ctx)
	}
	return err
}

// refusedCreates is pgtenant_resolver_creates_refused_total{reason}.
func (e *env) refusedCreates(t *testing.T, reason string) string {
	t.Helper()
	_, body := e.call(t, "GET", "/metrics", "")
	prefix := `pgtenant_resolver_creates_refused_total{reason="` + reason + `"} `
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			return v
		}
	}
	return "absent"
}

// assertLikeWrongPassword checks that connecting as tenant with the app
// secret is answered exactly as a wrong password for the same tenant is.
func (e *env) assertLikeWrongPassword(t *testing.T, tenant string) {
	t.Helper()
	unknown := pgErrOf(t, e.connectWith(t, tenant, appSecret))
	wrong := pgErrOf(t, e.connectWith(t, tenant, "not-the-"+appSecret))
	if wrong.Code != "28P01" {
		t.Fatalf("wrong password: %s %q, want 28P01", wrong.Code, wrong.Message)
	}
	type answer struct{ Severity, Code, Message, Detail, Hint string }
	u := answer{unknown.Severity, unknown.Code, unknown.Message, unknown.Detail, unknown.Hint}
	w := answer{wrong.Severity, wrong.Code, wrong.Message, wrong.Detail, wrong.Hint}
	if u != w {
		t.Fatalf("unknown tenant answered\n  %+v\nwrong password answered\n  %+v\nwant the same", u, w)
	}
}

func TestCreateAuto(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withCreate("auto", 0, 0))
	tenant := newTenant("auto")
	if _, err := e.connect(t, tenant); err != nil {
		t.Fatalf("first connect: %v", err)
	}
	if n := e.prov.Creates(); n != 1 {
		t.Fatalf("provider Create calls: %d, want 1", n)
	}
}

// TestCreateAPI runs with pooling off (the relay's path) and in session
// mode (the pooled path): both answer an unknown tenant alike.
func TestCreateAPI(t *testing.T) {
	for _, mode := range []string{pgrouter.PoolModeOff, "session"} {
		t.Run("pool_"+mode, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			e := startEnv(t, withCreate("api", 0, 0), withRouter(func(c *pgrouter.Config) { c.Pool.Mode = mode }))
			testCreateAPI(t, e)
		})
	}
}

func testCreateAPI(t *testing.T, e *env) {
	tenant := newTenant("api")

	e.assertLikeWrongPassword(t, tenant)
	if n := e.prov.Creates(); n != 0 {
		t.Fatalf("a client created the tenant (%d Create calls) with tenant.create: api", n)
	}
	if v := e.refusedCreates(t, "create_api"); v == "absent" || v == "0" {
		t.Errorf("creates_refused_total{reason=create_api} = %s, want > 0", v)
	}

	// The API creates it; then clients connect.
	var res admin.ActionResult
	e.do(t, "POST", "/v1/tenants/"+tenant+"/warm", 200, &res)
	if res.Via != "created" || e.prov.Creates() != 1 {
		t.Fatalf("warm: via %q, %d Create calls; want created, 1", res.Via, e.prov.Creates())
	}
	conn, err := e.connect(t, tenant)
	if err != nil {
		t.Fatalf("connect after warm: %v", err)
	}
	var db string
	if err := conn.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil || db != "adm_"+tenant {
		t.Fatalf("current_database: %q, %v", db, err)
	}
}

func TestCreateOff(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withCreate("off", 0, 0))
	tenant := newTenant("off")

	e.assertLikeWrongPassword(t, tenant)
	status, body := e.call(t, "POST", "/v1/tenants/"+tenant+"/warm", adminToken)
	if status != 403 || !strings.Contains(body, "tenant.create: off") {
		t.Fatalf("warm with tenant.create off: %d %s, want 403 naming tenant.create: off", status, body)
	}
	if n := e.prov.Creates(); n != 0 {
		t.Fatalf("%d Create calls with tenant.create: off", n)
	}
	if v := e.refusedCreates(t, "create_off"); v == "absent" || v == "0" {
		t.Errorf("creates_refused_total{reason=create_off} = %s, want > 0", v)
	}

	// A tenant already in the catalog still connects.
	existing := newTenant("off")
	if _, _, err := e.cat.Ensure(context.Background(), existing, e.prov.Name(), func(ctx context.Context) (provision.Endpoint, error) {
		return e.prov.Provider.Create(ctx, existing)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(t, existing); err != nil {
		t.Fatalf("existing tenant with tenant.create: off: %v", err)
	}
}

func TestMaxTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withCreate("auto", 2, 0))
	t1, t2, t3 := newTenant("max"), newTenant("max"), newTenant("max")
	for _, tn := range []string{t1, t2} {
		if _, err := e.connect(t, tn); err != nil {
			t.Fatalf("connect %s: %v", tn, err)
		}
	}
	pgErr := pgErrOf(t, e.connectWith(t, t3, appSecret))
	if pgErr.Code != "53400" || !strings.Contains(pgErr.Message, "tenant.max_tenants") || !strings.Contains(pgErr.Message, "2 tenants") {
		t.Fatalf("third tenant: %s %q, want 53400 naming tenant.max_tenants and the cap", pgErr.Code, pgErr.Message)
	}
	if !strings.Contains(pgErr.Hint, "tenant.max_tenants") {
		t.Errorf("hint %q does not say what to do", pgErr.Hint)
	}
	status, body := e.call(t, "POST", "/v1/tenants/"+t3+"/warm", adminToken)
	if status != 409 || !strings.Contains(body, "tenant.max_tenants") {
		t.Fatalf("warm over the cap: %d %s, want 409 naming tenant.max_tenants", status, body)
	}
	if n := e.prov.Creates(); n != 2 {
		t.Fatalf("%d Create calls, want 2", n)
	}
	if v := e.refusedCreates(t, "max_tenants"); v != "2" {
		t.Errorf("creates_refused_total{reason=max_tenants} = %s, want 2", v)
	}

	// A deleted tenant frees its place.
	e.do(t, "DELETE", "/v1/tenants/"+t1+"?confirm="+t1, 200, nil)
	var res admin.ActionResult
	e.do(t, "POST", "/v1/tenants/"+t3+"/warm", 200, &res)
	if res.Via != "created" {
		t.Fatalf("warm after a delete: via %q", res.Via)
	}
}

func TestCreatesPerMinute(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withCreate("auto", 0, 2))
	t1, t2, t3 := newTenant("rate"), newTenant("rate"), newTenant("rate")
	for _, tn := range []string{t1, t2} {
		if _, err := e.connect(t, tn); err != nil {
			t.Fatalf("connect %s: %v", tn, err)
		}
	}
	pgErr := pgErrOf(t, e.connectWith(t, t3, appSecret))
	if pgErr.Code != "53400" || !strings.Contains(pgErr.Message, "too many new tenants") ||
		!strings.Contains(pgErr.Message, "tenant.creates_per_minute") || !strings.Contains(pgErr.Message, "retry in ") {
		t.Fatalf("third tenant within the minute: %s %q, want 53400 too many new tenants ... retry in N s", pgErr.Code, pgErr.Message)
	}
	status, body := e.call(t, "POST", "/v1/tenants/"+t3+"/warm", adminToken)
	if status != 429 || !strings.Contains(body, "tenant.creates_per_minute") {
		t.Fatalf("warm over the rate: %d %s, want 429", status, body)
	}
	if v := e.refusedCreates(t, "creates_per_minute"); v != "2" {
		t.Errorf("creates_refused_total{reason=creates_per_minute} = %s, want 2", v)
	}

	// The minute is the catalog's: move the two creations out of it
	// instead of waiting.
	if _, err := e.catPool.Exec(context.Background(),
		`UPDATE pgtenant.tenants SET created_at = created_at - interval '61 seconds' WHERE tenant = ANY($1)`,
		[]string{t1, t2}); err != nil {
		t.Fatal(err)
	}
	var res admin.ActionResult
	e.do(t, "POST", "/v1/tenants/"+t3+"/warm", 200, &res)
	if res.Via != "created" || e.prov.Creates() != 3 {
		t.Fatalf("after the minute: via %q, %d Create calls", res.Via, e.prov.Creates())
	}
}
