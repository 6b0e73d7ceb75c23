package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/router"
)

const adminToken = "static-test-token"

// adminCall sends an admin API request to r and returns the status and
// the decoded JSON body.
func adminCall(t *testing.T, r *router.Router, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+r.AdminAddr().String()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: status %d, body not JSON: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

// namedDB creates database name in the shared cluster, dropped when the
// test ends (CreateDB's names are generated; a template needs known ones).
func namedDB(t *testing.T, name string) {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, c.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if conn, err := pgx.Connect(ctx, c.AdminDSN("postgres")); err == nil {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)")
			conn.Close(ctx)
		}
	})
}

func dbExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pgtest.Shared(t).AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// tenantDB connects as tenant through r and returns current_database(),
// or the connect error.
func tenantDB(t *testing.T, r *router.Router, tenant string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var db string
	err = conn.QueryRow(ctx, "SELECT current_database()").Scan(&db)
	return db, err
}

// staticDSN is a DSN to database db of the shared cluster as its admin
// user, the password given as ${PGTENANT_TEST_STATIC_PW}.
func staticDSN(t *testing.T, db, query string) string {
	c := pgtest.Shared(t)
	u := url.URL{Scheme: "postgres", User: url.UserPassword(c.AdminUser(), "${PGTENANT_TEST_STATIC_PW}"),
		Host: c.Host() + ":" + strconv.Itoa(int(c.Port())), Path: "/" + db, RawQuery: query}
	s, err := url.PathUnescape(u.String()) // keep ${...} readable
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The static provider routes tenants from each of its three sources to
// the right database: a configured route, the template, and a route
// registered through the admin API (which DELETE removes again). A tenant
// none of them knows gets 28000 saying there is no route, and a route's
// own sslmode decides its upstream TLS.
func TestStaticProviderRoutes(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	t.Setenv("PGTENANT_TEST_STATIC_PW", c.AdminPassword())
	cfgDB, regDB := pgtest.CreateDB(t, c), pgtest.CreateDB(t, c)
	namedDB(t, "st_tpl1")
	r, _ := start(t, func(cfg *router.Config) {
		cfg.Provider.Kind = "static"
		cfg.Admin.Listen, cfg.Admin.Token = "127.0.0.1:0", adminToken
		cfg.Provider.Static.Routes = map[string]string{
			"fromcfg": staticDSN(t, cfgDB, "sslmode=disable"),
			// The cluster has no TLS: a route that requires it cannot work.
			"needstls": staticDSN(t, cfgDB, "sslmode=require"),
		}
		cfg.Provider.Static.Template = fmt.Sprintf("postgres://%s@%s:%d/st_{tenant}", c.AdminUser(), c.Host(), c.Port())
		cfg.Provider.Static.PasswordEnv = "PGTENANT_TEST_STATIC_PW"
	})

	if db, err := tenantDB(t, r, "fromcfg"); err != nil || db != cfgDB {
		t.Fatalf("configured route: %q, %v; want database %s", db, err, cfgDB)
	}
	if db, err := tenantDB(t, r, "tpl1"); err != nil || db != "st_tpl1" {
		t.Fatalf("template route: %q, %v; want database st_tpl1", db, err)
	}
	// The same database as fromcfg, but TLS required: the server has none.
	if _, err := tenantDB(t, r, "needstls"); sqlState(err) != "08006" {
		t.Fatalf("route with sslmode=require to a server without TLS: %v; want 08006", err)
	}

	// The template covers every tenant, so the catalog source is shown on a
	// router without one.
	r2, cfg2 := start(t, func(cfg *router.Config) {
		cfg.Provider.Kind = "static"
		cfg.Admin.Listen, cfg.Admin.Token = "127.0.0.1:0", adminToken
	})
	_, err := tenantDB(t, r2, "registered")
	if sqlState(err) != "28000" || !strings.Contains(err.Error(), "no route") {
		t.Fatalf("unknown tenant: %v; want 28000 saying there is no route", err)
	}
	status, body := adminCall(t, r2, http.MethodPut, "/v1/tenants/registered/route", map[string]any{
		"host": c.Host(), "port": c.Port(), "database": regDB, "user": c.AdminUser(), "password": c.AdminPassword(),
	})
	if status != http.StatusOK {
		t.Fatalf("PUT route: %d %v", status, body)
	}
	if strings.Contains(fmt.Sprint(body), c.AdminPassword()) {
		t.Fatalf("PUT route echoes the password: %v", body)
	}
	if db, err := tenantDB(t, r2, "registered"); err != nil || db != regDB {
		t.Fatalf("registered route: %q, %v; want database %s", db, err, regDB)
	}
	catConn, err := pgx.Connect(t.Context(), cfg2.Catalog.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer catConn.Close(context.Background())
	var enc []byte
	if err := catConn.QueryRow(t.Context(), `SELECT password_enc FROM pgtenant.tenants WHERE tenant = 'registered'`).Scan(&enc); err != nil || bytes.Contains(enc, []byte(c.AdminPassword())) {
		t.Fatalf("registered password stored in clear (or %v)", err)
	}
	if status, body := adminCall(t, r2, http.MethodPut, "/v1/tenants/bad/route", map[string]any{"dsn": "postgres://x@h:notaport/d"}); status != http.StatusBadRequest {
		t.Fatalf("PUT route with a bad DSN: %d %v; want 400", status, body)
	}
	if status, body := adminCall(t, r2, http.MethodDelete, "/v1/tenants/registered/route", nil); status != http.StatusOK {
		t.Fatalf("DELETE route: %d %v", status, body)
	}
	if _, err := tenantDB(t, r2, "registered"); sqlState(err) != "28000" {
		t.Fatalf("after DELETE route: %v; want 28000", err)
	}
	if status, _ := adminCall(t, r2, http.MethodDelete, "/v1/tenants/registered/route", nil); status != http.StatusNotFound {
		t.Fatalf("second DELETE route: %d; want 404", status)
	}
}

// With provider.kind local and provider.also [static], a tenant placed on
// static is found there (the template), another is created on the local
// server; placing a created tenant elsewhere is refused with 409; and
// deleting each goes to the provider the catalog records: the local
// database is dropped, the static one (not the router's) is left alone.
func TestPlacementOnTwoProviders(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	t.Setenv("PGTENANT_TEST_STATIC_PW", c.AdminPassword())
	namedDB(t, "st_placeda")
	r, cfg := start(t, func(cfg *router.Config) {
		cfg.Provider.Also = []string{"static"}
		cfg.Admin.Listen, cfg.Admin.Token = "127.0.0.1:0", adminToken
		cfg.Provider.Static.Template = fmt.Sprintf("postgres://%s@%s:%d/st_{tenant}", c.AdminUser(), c.Host(), c.Port())
		cfg.Provider.Static.PasswordEnv = "PGTENANT_TEST_STATIC_PW"
	})
	localB := cfg.Provider.Local.Prefix + "defaultb"

	if status, body := adminCall(t, r, http.MethodPut, "/v1/tenants/placeda/placement", map[string]string{"provider": "nosuch"}); status != http.StatusBadRequest {
		t.Fatalf("placement on an unconfigured provider: %d %v; want 400", status, body)
	}
	if status, body := adminCall(t, r, http.MethodPut, "/v1/tenants/placeda/placement", map[string]string{"provider": "static"}); status != http.StatusOK || body["provider"] != "static" {
		t.Fatalf("PUT placement: %d %v", status, body)
	}
	if status, body := adminCall(t, r, http.MethodGet, "/v1/tenants/defaultb/placement", nil); status != http.StatusOK || body["provider"] != "local" || body["placed"] != false {
		t.Fatalf("GET placement of an unplaced tenant: %d %v; want local, not placed", status, body)
	}
	if db, err := tenantDB(t, r, "placeda"); err != nil || db != "st_placeda" {
		t.Fatalf("placed tenant: %q, %v; want st_placeda (static)", db, err)
	}
	if db, err := tenantDB(t, r, "defaultb"); err != nil || db != localB {
		t.Fatalf("unplaced tenant: %q, %v; want %s (local)", db, err, localB)
	}
	for tenant, want := range map[string]string{"placeda": "static", "defaultb": "local"} {
		ep, ok, err := r.Catalog().Lookup(t.Context(), tenant)
		if err != nil || !ok || ep.Provider != want {
			t.Fatalf("catalog provider of %s: %q (%v, %v); want %s", tenant, ep.Provider, ok, err, want)
		}
	}
	status, body := adminCall(t, r, http.MethodPut, "/v1/tenants/defaultb/placement", map[string]string{"provider": "static"})
	if status != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "exists on provider local") {
		t.Fatalf("placing a created tenant elsewhere: %d %v; want 409 saying where it is", status, body)
	}

	if status, body := adminCall(t, r, http.MethodDelete, "/v1/tenants/defaultb?confirm=defaultb", nil); status != http.StatusOK || body["provider"] != "deleted" {
		t.Fatalf("DELETE defaultb: %d %v; want deleted at the provider", status, body)
	}
	if dbExists(t, localB) {
		t.Fatalf("database %s still exists after deleting tenant defaultb", localB)
	}
	if status, body := adminCall(t, r, http.MethodDelete, "/v1/tenants/placeda?confirm=placeda", nil); status != http.StatusOK || body["catalog"] != "deleted" || body["provider"] != "not found" {
		t.Fatalf("DELETE placeda: %d %v; want the catalog row deleted, nothing at the static provider", status, body)
	}
	if !dbExists(t, "st_placeda") {
		t.Fatal("deleting a static tenant dropped its database")
	}
}
