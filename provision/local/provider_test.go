package local_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setupSQL is the application schema every tenant database inherits.
const setupSQL = `CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO widgets VALUES (1, 'gear');`

// tracer records the SQL the provider sends and the SQLSTATEs it gets back.
type tracer struct {
	mu    sync.Mutex
	sql   []string
	codes []string
}

func (tr *tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.sql = append(tr.sql, d.SQL)
	return ctx
}

func (tr *tracer) TraceQueryEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	var pe *pgconn.PgError
	if errors.As(d.Err, &pe) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.codes = append(tr.codes, pe.Code)
	}
}

func (tr *tracer) SQL() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.sql)
}

func (tr *tracer) Saw(code string) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Contains(tr.codes, code)
}

var seq atomic.Int32

// names returns a template name and tenant prefix no other test uses, so
// tests can share one cluster.
func names() (template, prefix string) {
	n := seq.Add(1)
	return fmt.Sprintf("tmpl%02d", n), fmt.Sprintf("p%02d_", n)
}

// adminPool opens a pool to database "postgres" on c, as user if not empty.
func adminPool(t testing.TB, c *localproc.Cluster, tr pgx.QueryTracer, user, password string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(c.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		cfg.ConnConfig.User, cfg.ConnConfig.Password = user, password
	}
	cfg.ConnConfig.Tracer = tr
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

type env struct {
	c     *localproc.Cluster
	admin *pgxpool.Pool
	tr    *tracer
	p     *local.Provider
	cfg   local.Config
}

// newEnv returns a provider on the shared cluster with its own template
// (already set up with setupSQL) and prefix.
func newEnv(t *testing.T, mod func(*local.Config)) *env {
	t.Helper()
	c := pgtest.Shared(t)
	tmpl, prefix := names()
	cfg := local.Config{Host: c.Host(), Port: c.Port(), Template: tmpl, Prefix: prefix}
	if mod != nil {
		mod(&cfg)
	}
	tr := &tracer{}
	admin := adminPool(t, c, tr, "", "")
	p := local.New(cfg, admin)
	created, err := p.EnsureTemplate(t.Context(), setupSQL)
	if err != nil || !created {
		t.Fatalf("EnsureTemplate = %v, %v; want true, nil", created, err)
	}
	return &env{c: c, admin: admin, tr: tr, p: p, cfg: cfg}
}

func connectAs(ctx context.Context, ep provision.Endpoint, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d sslmode=disable", ep.Host, ep.Port))
	if err != nil {
		return nil, err
	}
	cfg.Database, cfg.User, cfg.Password = db, ep.User, ep.Password
	return pgx.ConnectConfig(ctx, cfg)
}

func connect(ctx context.Context, ep provision.Endpoint) (*pgx.Conn, error) {
	return connectAs(ctx, ep, ep.Database)
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func countDatabases(t *testing.T, admin *pgxpool.Pool, name string) int {
	t.Helper()
	var n int
	err := admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func roleExists(t *testing.T, admin *pgxpool.Pool, name string) bool {
	t.Helper()
	var ok bool
	err := admin.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// checkTenant logs in with ep and checks that the session is the tenant's,
// in the tenant's database, with the template's schema and data.
func checkTenant(t *testing.T, ep provision.Endpoint) {
	t.Helper()
	conn, err := connect(t.Context(), ep)
	if err != nil {
		t.Fatalf("connect as tenant %s: %v", ep, err)
	}
	defer conn.Close(context.Background())
	var db, user, widget string
	err = conn.QueryRow(t.Context(), "SELECT current_database(), current_user, (SELECT name FROM widgets WHERE id = 1)").Scan(&db, &user, &widget)
	if err != nil {
		t.Fatal(err)
	}
	if db != ep.Database || user != ep.User || widget != "gear" {
		t.Fatalf("session = db %q user %q widget %q; want %q %q \"gear\"", db, user, widget, ep.Database, ep.User)
	}
	// The tenant owns its database, so it can change the schema.
	if _, err := conn.Exec(t.Context(), "CREATE TABLE mine (x int); DROP TABLE mine"); err != nil {
		t.Fatalf("tenant cannot create a table: %v", err)
	}
}

func TestName(t *testing.T) {
	if got := local.New(local.Config{}, nil).Name(); got != "local" {
		t.Fatalf("Name() = %q", got)
	}
}

func TestCreate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	ep, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	want := e.cfg.Prefix + "acme"
	if ep.Database != want || ep.User != want || ep.ProviderID != want ||
		ep.Host != e.c.Host() || ep.Port != e.c.Port() || len(ep.Password) < 40 {
		t.Fatalf("endpoint = %s (id %q, password length %d)", ep, ep.ProviderID, len(ep.Password))
	}
	if strings.Contains(ep.String(), ep.Password) {
		t.Fatal("Endpoint.String shows the password")
	}
	checkTenant(t, ep)

	// A tenant session must not keep the template busy for the next Create.
	ep2, err := e.p.Create(t.Context(), "globex")
	if err != nil {
		t.Fatal(err)
	}
	checkTenant(t, ep2)
}

func TestCreateDefaultsFromAdminPool(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, func(c *local.Config) { c.Host, c.Port = "", 0 })
	ep, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	cc := e.admin.Config().ConnConfig
	if ep.Host != cc.Host || ep.Port != cc.Port {
		t.Fatalf("endpoint addr = %s; want the admin pool's %s:%d", ep.Addr(), cc.Host, cc.Port)
	}
	checkTenant(t, ep)
}

func TestCreateIsIdempotent(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	first, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	// A row the second Create must keep: it adopts the database.
	conn, err := connect(t.Context(), first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "INSERT INTO widgets VALUES (2, 'kept')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())

	second, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if second.Database != first.Database || second.Password == first.Password {
		t.Fatalf("second Create: database %q (want %q), new password: %v", second.Database, first.Database, second.Password != first.Password)
	}
	if n := countDatabases(t, e.admin, first.Database); n != 1 {
		t.Fatalf("%d databases named %q", n, first.Database)
	}
	checkTenant(t, second)
	conn, err = connect(t.Context(), second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var name string
	if err := conn.QueryRow(t.Context(), "SELECT name FROM widgets WHERE id = 2").Scan(&name); err != nil || name != "kept" {
		t.Fatalf("row written before the second Create: %q, %v", name, err)
	}
	if _, err := connect(t.Context(), first); sqlstate(err) != "28P01" {
		t.Fatalf("old password: err = %v; want SQLSTATE 28P01", err)
	}
}

func TestTenantsAreIsolated(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	a, err := e.p.Create(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.p.Create(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		as   provision.Endpoint
		db   string
	}{
		{"a into b", a, b.Database},
		{"b into a", b, a.Database},
		{"a into template", a, e.cfg.Template},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := connectAs(t.Context(), tt.as, tt.db)
			if err == nil {
				conn.Close(t.Context())
			}
			if sqlstate(err) != "42501" {
				t.Fatalf("err = %v; want SQLSTATE 42501", err)
			}
		})
	}
}

// TestConcurrentCreateSameTenant races Creates of one tenant with no lock
// around them. All succeed, there is one database, and exactly one of the
// returned passwords (the last one set) works.
func TestConcurrentCreateSameTenant(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	const n = 20
	eps := make([]provision.Endpoint, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { eps[i], errs[i] = e.p.Create(t.Context(), "acme") })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if c := countDatabases(t, e.admin, e.cfg.Prefix+"acme"); c != 1 {
		t.Fatalf("%d databases", c)
	}
	working := 0
	for _, ep := range eps {
		conn, err := connect(t.Context(), ep)
		switch {
		case err == nil:
			working++
			conn.Close(t.Context())
		case sqlstate(err) != "28P01":
			t.Fatal(err)
		}
	}
	if working != 1 {
		t.Fatalf("%d of %d passwords work; want exactly 1", working, n)
	}
}

// TestConcurrentCreateManyTenants also checks that a second provider (a
// second router instance, with its own pool) does not get in the way.
func TestConcurrentCreateManyTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	other := local.New(e.cfg, adminPool(t, e.c, nil, "", ""))
	const n = 10
	eps := make([]provision.Endpoint, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		p := e.p
		if i%2 == 1 {
			p = other
		}
		wg.Go(func() { eps[i], errs[i] = p.Create(t.Context(), fmt.Sprintf("tenant%d", i)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		checkTenant(t, ep)
	}
}

// TestCreateWaitsForBusyTemplate holds a session on the template long
// enough for the server to give up (55006, after about 5s) and checks that
// Create retries until the session is gone.
func TestCreateWaitsForBusyTemplate(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 6s")
	}
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	cfg := e.admin.Config().ConnConfig.Config.Copy()
	cfg.Database = e.cfg.Template
	blocker, err := pgconn.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.p.Create(t.Context(), "acme")
		done <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !e.tr.Saw("55006") {
		select {
		case err := <-done:
			blocker.Close(t.Context())
			t.Fatalf("Create returned %v while the template was busy", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			blocker.Close(t.Context())
			t.Fatal("no 55006 within 20s")
		}
	}
	if err := blocker.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCreateStopsWhenContextEnds(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	cfg := e.admin.Config().ConnConfig.Config.Copy()
	cfg.Database = e.cfg.Template
	blocker, err := pgconn.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = e.p.Create(ctx, "acme")
	if err == nil || !strings.Contains(err.Error(), "create database") {
		t.Fatalf("err = %v; want a create database error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Create took %v after its context ended", d)
	}
	// The provider still works (its lock was released or its connection dropped).
	blocker.Close(t.Context())
	if _, err := e.p.Create(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
}

func TestStrategies(t *testing.T) {
	pgtest.CheckGoroutines(t)
	for _, s := range []string{"", "wal_log", "file_copy", "FILE_COPY"} {
		t.Run("strategy="+s, func(t *testing.T) {
			e := newEnv(t, func(c *local.Config) { c.Strategy = s })
			ep, err := e.p.Create(t.Context(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			checkTenant(t, ep)
		})
	}
}

func TestDelete(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	ep, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	// An open tenant session does not stop Delete (WITH (FORCE)).
	conn, err := connect(t.Context(), ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := e.p.Delete(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if countDatabases(t, e.admin, ep.Database) != 0 || roleExists(t, e.admin, ep.User) {
		t.Fatal("database or role left after Delete")
	}
	if err := conn.Ping(t.Context()); err == nil {
		t.Fatal("tenant session survived Delete")
	}
	for _, tenant := range []string{"acme", "never"} {
		if err := e.p.Delete(t.Context(), tenant); !errors.Is(err, provision.ErrTenantNotFound) {
			t.Fatalf("Delete(%q) = %v; want ErrTenantNotFound", tenant, err)
		}
	}
	// And the tenant can be created again.
	ep, err = e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	checkTenant(t, ep)
}

// TestDeleteHalfCreated deletes a tenant whose Create failed after making
// the role: Delete removes what is there.
func TestDeleteHalfCreated(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	broken := local.New(local.Config{Template: "no_such_template", Prefix: e.cfg.Prefix}, e.admin)
	if _, err := broken.Create(t.Context(), "acme"); err == nil {
		t.Fatal("Create from a missing template succeeded")
	}
	if !roleExists(t, e.admin, e.cfg.Prefix+"acme") {
		t.Fatal("want the role left behind by the failed Create")
	}
	if err := e.p.Delete(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, e.admin, e.cfg.Prefix+"acme") {
		t.Fatal("role left after Delete")
	}
}

// TestPasswordNeverLeaks checks that the plain password is never sent to
// the server (only its SCRAM verifier is), and that errors from the steps
// that carry the verifier do not contain it.
func TestPasswordNeverLeaks(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	ep, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	sent := strings.Join(e.tr.SQL(), "\n")
	if strings.Contains(sent, ep.Password) {
		t.Fatal("the password was sent to the server")
	}
	if !strings.Contains(sent, "PASSWORD 'SCRAM-SHA-256$4096:") {
		t.Fatal("no SCRAM verifier was sent")
	}

	t.Run("missing template", func(t *testing.T) {
		tr := &tracer{}
		p := local.New(local.Config{Template: "no_such_template", Prefix: e.cfg.Prefix}, adminPool(t, e.c, tr, "", ""))
		_, err := p.Create(t.Context(), "beta")
		checkNoSecret(t, err, tr, "local: create database for tenant \"beta\": ", "3D000")
	})

	t.Run("admin without CREATEROLE", func(t *testing.T) {
		user := e.cfg.Prefix + "weak"
		mustExec(t, e.admin, "CREATE ROLE "+user+" LOGIN CREATEDB PASSWORD 'weakpw'")
		t.Cleanup(func() { _, _ = e.admin.Exec(context.Background(), "DROP ROLE "+user) })
		tr := &tracer{}
		p := local.New(e.cfg, adminPool(t, e.c, tr, user, "weakpw"))
		_, err := p.Create(t.Context(), "gamma")
		checkNoSecret(t, err, tr, "local: create role for tenant \"gamma\": ", "42501")
	})
}

func checkNoSecret(t *testing.T, err error, tr *tracer, prefix, code string) {
	t.Helper()
	if err == nil {
		t.Fatal("Create succeeded")
	}
	if !strings.HasPrefix(err.Error(), prefix) || sqlstate(err) != code {
		t.Fatalf("err = %q (SQLSTATE %s); want prefix %q and SQLSTATE %s", err, sqlstate(err), prefix, code)
	}
	if strings.Contains(err.Error(), "SCRAM") || strings.Contains(strings.ToUpper(err.Error()), "PASSWORD") {
		t.Fatalf("error mentions the secret: %q", err)
	}
	for _, sql := range tr.SQL() {
		if _, v, ok := strings.Cut(sql, "PASSWORD '"); ok && strings.Contains(err.Error(), strings.TrimSuffix(v, "'")) {
			t.Fatalf("error contains the verifier: %q", err)
		}
	}
}

func mustExec(t *testing.T, admin *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := admin.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestNonSuperuserAdmin runs the whole life cycle with an admin that has
// only CREATEDB and CREATEROLE.
func TestNonSuperuserAdmin(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	super := adminPool(t, c, nil, "", "")
	tmpl, prefix := names()
	user := prefix + "admin"
	mustExec(t, super, "CREATE ROLE "+user+" LOGIN CREATEDB CREATEROLE PASSWORD 'adminpw'")
	admin := adminPool(t, c, nil, user, "adminpw")
	p := local.New(local.Config{Host: c.Host(), Port: c.Port(), Template: tmpl, Prefix: prefix}, admin)
	if _, err := p.EnsureTemplate(t.Context(), setupSQL); err != nil {
		t.Fatal(err)
	}
	ep, err := p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	checkTenant(t, ep)
	if ep, err = p.Create(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	checkTenant(t, ep)
	if err := p.Delete(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if countDatabases(t, super, ep.Database) != 0 || roleExists(t, super, ep.User) {
		t.Fatal("database or role left after Delete")
	}
}

// TestRefusesPrivilegedRole: a role that happens to have a tenant's name
// but more privileges is never taken over (its password is not reset).
func TestRefusesPrivilegedRole(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	role := e.cfg.Prefix + "boss"
	mustExec(t, e.admin, "CREATE ROLE "+role+" LOGIN CREATEDB PASSWORD 'bosspw'")
	t.Cleanup(func() { _, _ = e.admin.Exec(context.Background(), "DROP ROLE "+role) })
	if _, err := e.p.Create(t.Context(), "boss"); err == nil || !strings.Contains(err.Error(), "privileged") {
		t.Fatalf("Create = %v; want a privileged role error", err)
	}
	if err := e.p.Delete(t.Context(), "boss"); err == nil || !strings.Contains(err.Error(), "privileged") {
		t.Fatalf("Delete = %v; want a privileged role error", err)
	}
	conn, err := connectAs(t.Context(), provision.Endpoint{Host: e.c.Host(), Port: e.c.Port(), User: role, Password: "bosspw"}, "postgres")
	if err != nil {
		t.Fatalf("the role's password changed: %v", err)
	}
	conn.Close(t.Context())
}

// TestRefusesForeignDatabase: a database with a tenant's name that the
// tenant's role does not own is neither adopted nor dropped.
func TestRefusesForeignDatabase(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, nil)
	db := e.cfg.Prefix + "other"
	mustExec(t, e.admin, "CREATE DATABASE "+db)
	t.Cleanup(func() { _, _ = e.admin.Exec(context.Background(), "DROP DATABASE "+db) })
	if _, err := e.p.Create(t.Context(), "other"); err == nil || !strings.Contains(err.Error(), "owned by") {
		t.Fatalf("Create = %v; want an owner error", err)
	}
	if err := e.p.Delete(t.Context(), "other"); err == nil || !strings.Contains(err.Error(), "owned by") {
		t.Fatalf("Delete = %v; want an owner error", err)
	}
	if countDatabases(t, e.admin, db) != 1 {
		t.Fatal("foreign database dropped")
	}
}

func TestInvalidInput(t *testing.T) {
	tests := []struct {
		name   string
		cfg    local.Config
		tenant string
		want   string
	}{
		{"empty tenant", local.Config{}, "", "empty tenant"},
		{"name too long", local.Config{}, strings.Repeat("a", 62), "longer than 63 bytes"},
		{"NUL", local.Config{}, "a\x00b", "NUL"},
		{"bad strategy", local.Config{Strategy: "wal_log; DROP"}, "acme", "strategy"},
		{"template too long", local.Config{Template: strings.Repeat("a", 58)}, "acme", "template name"},
		{"tenant is the template", local.Config{Prefix: "pgtenant_"}, "template", "reserved"},
		{"tenant is the template's owner", local.Config{Prefix: "pgtenant_"}, "template_owner", "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := local.New(tt.cfg, nil) // fails before it needs a pool
			if _, err := p.Create(t.Context(), tt.tenant); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Create = %v; want an error containing %q", err, tt.want)
			}
			if err := p.Delete(t.Context(), tt.tenant); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Delete = %v; want an error containing %q", err, tt.want)
			}
		})
	}
	// The longest name that fits.
	if err := (&local.Config{Template: strings.Repeat("a", 57)}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureTemplate(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	admin := adminPool(t, c, nil, "", "")
	tmpl, prefix := names()
	p := local.New(local.Config{Template: tmpl, Prefix: prefix}, admin)

	// Failing setup SQL leaves nothing behind, so the next call starts over.
	if _, err := p.EnsureTemplate(t.Context(), "CREATE TABLE widgets (; -- syntax error"); err == nil ||
		!strings.Contains(err.Error(), "setup sql") || sqlstate(err) != "42601" {
		t.Fatalf("EnsureTemplate with bad SQL = %v", err)
	}
	if countDatabases(t, admin, tmpl)+countDatabases(t, admin, tmpl+"_build") != 0 {
		t.Fatal("failed EnsureTemplate left a database")
	}

	// Concurrent callers: exactly one creates it.
	var created atomic.Int32
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() {
			ok, err := p.EnsureTemplate(t.Context(), setupSQL)
			errs[i] = err
			if ok {
				created.Add(1)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil || created.Load() != 1 {
		t.Fatalf("concurrent EnsureTemplate: %d created, err %v", created.Load(), err)
	}

	// An existing template is left alone: setup SQL does not run again.
	if ok, err := p.EnsureTemplate(t.Context(), "SELECT 1/0"); ok || err != nil {
		t.Fatalf("EnsureTemplate on an existing template = %v, %v", ok, err)
	}

	var isTemplate bool
	var acl string
	err := admin.QueryRow(t.Context(), "SELECT datistemplate, coalesce(datacl::text, '') FROM pg_database WHERE datname = $1", tmpl).Scan(&isTemplate, &acl)
	if err != nil {
		t.Fatal(err)
	}
	if !isTemplate || acl == "" || strings.Contains(acl, "{=") || strings.Contains(acl, ",=") {
		t.Fatalf("template: datistemplate %v, acl %q; want true and no PUBLIC grant", isTemplate, acl)
	}
	// No admin session is left on the template.
	var sessions int
	err = admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", tmpl).Scan(&sessions)
	if err != nil || sessions != 0 {
		t.Fatalf("%d sessions on the template (%v)", sessions, err)
	}
}

// BenchmarkCreate measures one Create (CREATE ROLE, CREATE DATABASE
// TEMPLATE, grants, hand-over of the template's objects) from a small
// template on a fresh cluster, for both strategies, with pgtest's fast
// settings (fsync=off) and with durable ones. It also reports the median.
//
//	go test -run '^$' -bench BenchmarkCreate -benchtime 10x ./provision/local/
//
// Median ms of one Create, 10 per run, two runs, on a 2 vCPU Intel Xeon VM
// with PostgreSQL 15.18 and a ~7.5 MB template (CREATE DATABASE itself is
// ~85% of it; CREATE ROLE ~5-15 ms, hand-over session ~10 ms):
//
//	                 wal_log    file_copy
//	fsync=off        157-210    182-212
//	durable          221-245    134-200
func BenchmarkCreate(b *testing.B) {
	for _, durable := range []bool{false, true} {
		b.Run(fmt.Sprintf("durable=%v", durable), func(b *testing.B) {
			var settings map[string]string
			if durable {
				settings = map[string]string{"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
			}
			c := pgtest.Start(b, settings)
			admin := adminPool(b, c, nil, "", "")
			for _, strategy := range []string{"wal_log", "file_copy"} {
				b.Run("strategy="+strategy, func(b *testing.B) {
					benchmarkCreate(b, admin, strategy)
				})
			}
		})
	}
}

func benchmarkCreate(b *testing.B, admin *pgxpool.Pool, strategy string) {
	tmpl, prefix := names()
	p := local.New(local.Config{Template: tmpl, Prefix: prefix, Strategy: strategy}, admin)
	if _, err := p.EnsureTemplate(b.Context(), setupSQL); err != nil {
		b.Fatal(err)
	}
	var took []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := p.Create(b.Context(), fmt.Sprintf("t%d", len(took))); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms")
	for i := range took {
		if err := p.Delete(context.Background(), fmt.Sprintf("t%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}
