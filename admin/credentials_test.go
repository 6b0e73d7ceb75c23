package admin_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

// Tests of per-tenant secrets (auth.per_tenant): a real router, real pgx
// clients, the admin API, the catalog queried directly.

const tenantPassword = "a-person's-0wn-s3cret"

func withPerTenant(tenantSecret string) envOpt {
	return withRouter(func(c *pgrouter.Config) {
		c.Auth.PerTenant, c.Auth.TenantSecret, c.Auth.PerTenantRefresh = true, tenantSecret, 0
	})
}

// answer is what a client hears when it is refused.
type answer struct{ Severity, Code, Message, Detail, Hint string }

func (e *env) refusal(t *testing.T, tenant, password string) answer {
	t.Helper()
	pe := pgErrOf(t, e.connectWith(t, tenant, password))
	return answer{pe.Severity, pe.Code, pe.Message, pe.Detail, pe.Hint}
}

// assertRefusedLikeWrongPassword checks that password is refused for
// tenant exactly as a wrong password is.
func (e *env) assertRefusedLikeWrongPassword(t *testing.T, tenant, password string) {
	t.Helper()
	got, wrong := e.refusal(t, tenant, password), e.refusal(t, tenant, "not-the-"+appSecret)
	if wrong.Code != "28P01" || got != wrong {
		t.Fatalf("tenant %s: refused with\n  %+v\na wrong password with\n  %+v\nwant the same, 28P01", tenant, got, wrong)
	}
}

// setPassword calls PUT /v1/tenants/{id}/password with body.
func (e *env) setPassword(t *testing.T, tenant, body string) admin.ActionResult {
	t.Helper()
	status, out := e.send(t, "PUT", "/v1/tenants/"+tenant+"/password", adminToken, body)
	if status != 200 {
		t.Fatalf("PUT password: %d %s", status, out)
	}
	assertNoSecret(t, out, tenantPassword)
	var res admin.ActionResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.OwnSecret == nil || !*res.OwnSecret {
		t.Fatalf("PUT password: %s (%v), want own_secret true", out, err)
	}
	return res
}

// metric returns the value of the metric line starting with prefix (name
// and labels), or "absent".
func (e *env) metric(t *testing.T, prefix string) string {
	t.Helper()
	_, body := e.call(t, "GET", "/metrics", "")
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix+" "); ok {
			return v
		}
	}
	return "absent"
}

// assertNoPlainPassword reads every row of every table in schema pgtenant
// and fails if one holds pw.
func (e *env) assertNoPlainPassword(t *testing.T, pw string) {
	t.Helper()
	ctx := context.Background()
	rows, err := e.catPool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'pgtenant'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("tables of pgtenant: %v, %v", tables, err)
	}
	for _, tbl := range tables {
		var dump string
		q := `SELECT coalesce(string_agg(t::text, E'\n'), '') FROM pgtenant.` + pgx.Identifier{tbl}.Sanitize() + ` t`
		if err := e.catPool.QueryRow(ctx, q).Scan(&dump); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(dump, pw) || strings.Contains(dump, base64.StdEncoding.EncodeToString([]byte(pw))) {
			t.Errorf("pgtenant.%s holds the plain password", tbl)
		}
	}
}

func TestTenantSecretBesides(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withPerTenant("besides"))
	own, other := newTenant("own"), newTenant("other")
	for _, tenant := range []string{own, other} {
		if _, err := e.connect(t, tenant); err != nil {
			t.Fatalf("connect %s with the app secret: %v", tenant, err)
		}
	}
	if err := e.connectWith(t, own, tenantPassword); pgCode(err) != "28P01" {
		t.Fatalf("tenant secret before it is set: %v, want 28P01", err)
	}

	e.setPassword(t, own, `{"password": "`+tenantPassword+`"}`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+own+":"+tenantPassword+"@"+e.addr+"/app?sslmode=disable")
	if err != nil {
		t.Fatalf("connect with the tenant's own secret: %v", err)
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil || db != "adm_"+own {
		t.Fatalf("current_database = %q, %v; want adm_%s", db, err, own)
	}
	_ = conn.Close(ctx)
	if v := e.metric(t, `pgtenant_proxy_client_logins_total{credential="tenant"}`); v != "1" {
		t.Errorf("client_logins_total{credential=tenant} = %s, want 1", v)
	}

	// Scope: this tenant only, refused elsewhere as a wrong password is.
	e.assertRefusedLikeWrongPassword(t, other, tenantPassword)
	e.assertRefusedLikeWrongPassword(t, newTenant("nobody"), tenantPassword)
	// Besides: the app secret still opens the tenant.
	if err := e.connectWith(t, own, appSecret); err != nil {
		t.Fatalf("app secret on a tenant with its own secret (besides): %v", err)
	}

	var st admin.TenantStatus
	e.do(t, "GET", "/v1/tenants/"+own, 200, &st)
	if !st.OwnSecret {
		t.Errorf("GET /v1/tenants/%s: own_secret false, want true", own)
	}
	var verifier string
	if err := e.catPool.QueryRow(ctx, `SELECT verifier FROM pgtenant.credentials WHERE tenant = $1`, own).Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$4096:") {
		t.Errorf("stored %q..., want a SCRAM verifier", verifier[:min(len(verifier), 20)])
	}
	e.assertNoPlainPassword(t, tenantPassword)

	// Bad bodies are refused and echo nothing.
	for _, body := range []string{`{}`, `{"password": "x", "verifier": "y"}`, `{"verifier": "` + tenantPassword + `"}`, `{"pasword": "` + tenantPassword + `"}`} {
		status, out := e.send(t, "PUT", "/v1/tenants/"+own+"/password", adminToken, body)
		if status != 400 {
			t.Errorf("PUT %s: %d %s, want 400", body, status, out)
		}
		assertNoSecret(t, out, tenantPassword)
	}

	var res admin.ActionResult
	e.do(t, "DELETE", "/v1/tenants/"+own+"/password", 200, &res)
	if res.Deleted == nil || !*res.Deleted {
		t.Fatalf("DELETE password: deleted %v, want true", res.Deleted)
	}
	e.assertRefusedLikeWrongPassword(t, own, tenantPassword)
	if err := e.connectWith(t, own, appSecret); err != nil {
		t.Fatalf("app secret after the tenant's secret was deleted: %v", err)
	}
}

// pgVerifier is the SCRAM verifier PostgreSQL itself stores for password.
func (e *env) pgVerifier(t *testing.T, password string) string {
	t.Helper()
	ctx := context.Background()
	role := "v_" + strings.ReplaceAll(newTenant("role"), "-", "_")
	if _, err := e.catPool.Exec(ctx, `SET password_encryption = 'scram-sha-256'; CREATE ROLE `+role+` PASSWORD '`+password+`'`); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := e.catPool.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, role).Scan(&v); err != nil {
		t.Fatal(err)
	}
	_, _ = e.catPool.Exec(ctx, `DROP ROLE `+role)
	return v
}

func TestTenantSecretInstead(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withPerTenant("instead"))
	own, other := newTenant("own"), newTenant("other")
	for _, tenant := range []string{own, other} {
		if _, err := e.connect(t, tenant); err != nil {
			t.Fatalf("connect %s with the app secret: %v", tenant, err)
		}
	}
	// A verifier made by PostgreSQL, as --verifier takes it.
	e.setPassword(t, own, `{"verifier": "`+e.pgVerifier(t, "instead-pw")+`"}`)
	if err := e.connectWith(t, own, "instead-pw"); err != nil {
		t.Fatalf("connect with the tenant's own secret: %v", err)
	}
	e.assertRefusedLikeWrongPassword(t, own, appSecret) // instead: the app secret no longer opens it
	if err := e.connectWith(t, other, appSecret); err != nil {
		t.Fatalf("app secret on a tenant without its own secret: %v", err)
	}
	e.assertRefusedLikeWrongPassword(t, other, "instead-pw")

	// A verifier with other parameters than PostgreSQL's defaults would
	// set the tenant apart: refused.
	status, out := e.send(t, "PUT", "/v1/tenants/"+own+"/password", adminToken,
		`{"verifier": "SCRAM-SHA-256$8192:c2FsdHNhbHRzYWx0c2FsdA==$`+strings.Repeat("A", 43)+`=:`+strings.Repeat("A", 43)+`="}`)
	if status != 400 || !strings.Contains(out, "4096 iterations") {
		t.Errorf("verifier with 8192 iterations: %d %s, want 400 naming 4096 iterations", status, out)
	}
}

// scramSalt starts a SCRAM login as tenant, returns the salt and
// iteration count of the router's server-first-message, and hangs up.
func (e *env) scramSalt(t *testing.T, tenant string) (salt []byte, iters int) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": tenant, "database": "app"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := m.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("got %T, want AuthenticationSASL", m)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=clientnonce0123456789")})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	cont, ok := m.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %T, want AuthenticationSASLContinue", m)
	}
	for f := range strings.SplitSeq(string(cont.Data), ",") {
		switch {
		case strings.HasPrefix(f, "s="):
			if salt, err = base64.StdEncoding.DecodeString(f[2:]); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(f, "i="):
			if iters, err = strconv.Atoi(f[2:]); err != nil {
				t.Fatal(err)
			}
		}
	}
	return salt, iters
}

// TestTenantSecretHidesTenants: with tenant.create api, an unknown tenant,
// a tenant without its own secret and one with it look alike from the
// outside: each gets a salt of its own, the same on every try and on every
// instance sharing the catalog key, of the same shape; and every refusal
// is a wrong password's.
func TestTenantSecretHidesTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	key := catalog.NewKey()
	sameKey := withRouter(func(c *pgrouter.Config) { c.Catalog.Key = key })
	e := startEnv(t, withPerTenant("besides"), withCreate("api", 0, 0), sameKey)
	plain, own, unknown := newTenant("plain"), newTenant("own"), newTenant("unknown")
	for _, tenant := range []string{plain, own} {
		e.do(t, "POST", "/v1/tenants/"+tenant+"/warm", 200, nil)
	}
	e.setPassword(t, own, `{"password": "`+tenantPassword+`"}`)

	salts := map[string][]byte{}
	for _, tenant := range []string{plain, own, unknown} {
		salt, iters := e.scramSalt(t, tenant)
		if len(salt) != 16 || iters != 4096 {
			t.Errorf("%s: salt of %d bytes, %d iterations; want 16, 4096 for every tenant", tenant, len(salt), iters)
		}
		if again, _ := e.scramSalt(t, tenant); !bytes.Equal(again, salt) {
			t.Errorf("%s: the salt changed between two tries", tenant)
		}
		for other, s := range salts {
			if bytes.Equal(s, salt) {
				t.Errorf("%s and %s got the same salt", tenant, other)
			}
		}
		salts[tenant] = salt
	}
	// Another instance with the catalog key offers the same salts.
	e2 := startEnv(t, withPerTenant("besides"), withCreate("api", 0, 0), sameKey)
	if s, _ := e2.scramSalt(t, unknown); !bytes.Equal(s, salts[unknown]) {
		t.Error("another instance offers an unknown tenant another salt")
	}
	if s, _ := e2.scramSalt(t, plain); !bytes.Equal(s, salts[plain]) {
		t.Error("another instance offers a tenant without its own secret another salt")
	}

	e.assertLikeWrongPassword(t, unknown) // the app secret on an unknown tenant
	e.assertRefusedLikeWrongPassword(t, unknown, tenantPassword)
	e.assertRefusedLikeWrongPassword(t, plain, tenantPassword)
	if err := e.connectWith(t, own, tenantPassword); err != nil {
		t.Fatalf("own secret: %v", err)
	}
	if err := e.connectWith(t, plain, appSecret); err != nil {
		t.Fatalf("app secret on a tenant without its own: %v", err)
	}
}

// With auth.per_tenant off a tenant's secret would never be used: the API
// says so rather than storing it.
func TestTenantSecretOff(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t)
	tenant := newTenant("off")
	status, out := e.send(t, "PUT", "/v1/tenants/"+tenant+"/password", adminToken, `{"password": "`+tenantPassword+`"}`)
	if status != 409 || !strings.Contains(out, "auth.per_tenant: true") {
		t.Fatalf("PUT password with per_tenant off: %d %s, want 409 naming auth.per_tenant", status, out)
	}
	assertNoSecret(t, out, tenantPassword)
	var n int
	if err := e.catPool.QueryRow(context.Background(), `SELECT count(*) FROM pgtenant.credentials`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("credentials stored: %d, %v; want none", n, err)
	}
}
