package admin_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestAPITenantPoolMode(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t)
	ctx := t.Context()
	tenant := newTenant("pm")
	path := "/v1/tenants/" + tenant + "/pool-mode"

	if st, _ := e.send(t, http.MethodPut, path, "", `{"mode":"session"}`); st != http.StatusUnauthorized {
		t.Fatalf("PUT without a token: %d", st)
	}
	if st, _ := e.send(t, http.MethodPut, path, "wrong", `{"mode":"session"}`); st != http.StatusUnauthorized {
		t.Fatalf("PUT with a wrong token: %d", st)
	}
	if st, _ := e.call(t, http.MethodDelete, path, ""); st != http.StatusUnauthorized {
		t.Fatalf("DELETE without a token: %d", st)
	}
	for _, body := range []string{`{"mode":"statement"}`, `{"mode":"Session"}`, `{}`, `not json`, `{"mode":"session","x":1}`} {
		if st, b := e.send(t, http.MethodPut, path, adminToken, body); st != http.StatusBadRequest {
			t.Errorf("PUT %s: %d %s, want 400", body, st, b)
		}
	}
	if st, _ := e.send(t, http.MethodPut, "/v1/tenants/Bad%20ID/pool-mode", adminToken, `{"mode":"off"}`); st != http.StatusBadRequest {
		t.Errorf("PUT for an invalid tenant ID: %d, want 400", st)
	}
	if st, _ := e.call(t, http.MethodGet, path, adminToken); st != http.StatusMethodNotAllowed {
		t.Errorf("GET %s: %d, want 405", path, st)
	}
	if m, err := e.cat.PoolModes(ctx); err != nil || len(m) != 0 {
		t.Fatalf("after refused requests the catalog holds %v, %v", m, err)
	}

	for _, mode := range []string{"session", "off", "transaction"} {
		st, body := e.send(t, http.MethodPut, path, adminToken, `{"mode":"`+mode+`"}`)
		if st != http.StatusOK || !strings.Contains(body, `"pool_mode": "`+mode+`"`) {
			t.Fatalf("PUT %s: %d %s", mode, st, body)
		}
		// Stored for every instance, applied here at once.
		if m, err := e.cat.PoolModes(ctx); err != nil || m[tenant] != mode {
			t.Fatalf("catalog after PUT %s: %v, %v", mode, m, err)
		}
		want := proxy.PoolMode(mode)
		if mode == "off" {
			want = proxy.PoolOff
		}
		if got, ok := e.srv.TenantPoolModes()[tenant]; !ok || got != want {
			t.Fatalf("proxy after PUT %s: %q, %v", mode, got, ok)
		}
		var st2 admin.TenantStatus
		e.do(t, http.MethodGet, "/v1/tenants/"+tenant, http.StatusOK, &st2)
		if st2.PoolMode != mode {
			t.Errorf("GET after PUT %s: pool_mode %q", mode, st2.PoolMode)
		}
	}

	// DELETE clears; so does an empty mode.
	var res admin.ActionResult
	e.do(t, http.MethodDelete, path, http.StatusOK, &res)
	if res.PoolMode == nil || *res.PoolMode != "" {
		t.Errorf("DELETE answered %+v", res)
	}
	if _, ok := e.srv.TenantPoolModes()[tenant]; ok {
		t.Error("proxy still has the tenant's mode after DELETE")
	}
	// Not in the catalog and nothing else known of it: 404, pool_mode gone.
	if st, body := e.call(t, http.MethodGet, "/v1/tenants/"+tenant, adminToken); st != http.StatusNotFound {
		t.Errorf("GET after DELETE: %d %s", st, body)
	}
	if st, _ := e.send(t, http.MethodPut, path, adminToken, `{"mode":"off"}`); st != http.StatusOK {
		t.Fatal(st)
	}
	if st, body := e.send(t, http.MethodPut, path, adminToken, `{"mode":""}`); st != http.StatusOK {
		t.Fatalf("PUT empty mode: %d %s", st, body)
	}
	if m, err := e.cat.PoolModes(ctx); err != nil || len(m) != 0 {
		t.Errorf("catalog after clearing: %v, %v", m, err)
	}

	// A tenant in the catalog shows no pool_mode when it has none.
	if _, err := e.connect(t, tenant); err != nil {
		t.Fatal(err)
	}
	if body := e.do(t, http.MethodGet, "/v1/tenants/"+tenant, http.StatusOK, nil); strings.Contains(body, "pool_mode") {
		t.Errorf("GET of a tenant without a mode: %s", body)
	}
}
