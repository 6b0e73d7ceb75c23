package proxy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

func TestFirstConnectCreatesTenantThenReuses(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("acme")

	conn := r.connect(t, tenant)
	if got, want := queryString(t, conn, "SELECT current_database()"), "t_"+tenant; got != want {
		t.Fatalf("current_database = %q, want %q", got, want)
	}
	if got, want := queryString(t, conn, "SELECT current_user"), "t_"+tenant; got != want {
		t.Fatalf("current_user = %q, want %q", got, want)
	}
	// The template's schema is there.
	if _, err := conn.Exec(context.Background(), "INSERT INTO app_items VALUES (1, 'first')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())

	conn2 := r.connect(t, tenant)
	if got := queryString(t, conn2, "SELECT name FROM app_items WHERE id = 1"); got != "first" {
		t.Fatalf("second session sees %q", got)
	}
	if n := r.prov.creates.Load(); n != 1 {
		t.Fatalf("provider Create called %d times, want 1", n)
	}
	ep, ok, err := r.cat.Lookup(context.Background(), tenant)
	if err != nil || !ok {
		t.Fatalf("catalog lookup: %v %v", ok, err)
	}
	conn2.Close(context.Background())
	r.stop()
	if !strings.Contains(r.logs.String(), "via=created") || !strings.Contains(r.logs.String(), "via=cache") {
		t.Errorf("session log lines do not say how sessions were routed:\n%s", r.logs.String())
	}
	r.assertNoSecrets(t, ep.Password)
}

func TestTenantsAreIsolated(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	a, b := newTenant("alpha"), newTenant("beta")
	ctx := context.Background()

	ca := r.connect(t, a)
	if _, err := ca.Exec(ctx, "INSERT INTO app_items VALUES (42, 'secret of a')"); err != nil {
		t.Fatal(err)
	}
	cb := r.connect(t, b)
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM app_items").Scan(&n); err != nil || n != 0 {
		t.Fatalf("tenant b sees %d rows of app_items (err %v), want 0", n, err)
	}
	// b's own role cannot connect to a's database, even directly.
	epB, _, err := r.cat.Lookup(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(r.cluster.AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password, cfg.Database = epB.User, epB.Password, "t_"+a
	_, err = pgconn.ConnectConfig(ctx, cfg)
	if pgCode(err) != "42501" {
		t.Fatalf("tenant b's role connecting to tenant a's database: %v, want 42501", err)
	}
}

func TestConcurrentFirstConnectsCreateOnce(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("storm")
	const clients = 100

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := make(chan struct{})
	for range clients {
		wg.Go(func() {
			<-start
			conn, err := pgx.Connect(ctx, r.dsn(tenant, appSecret))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			var db string
			if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
				errs <- err
				return
			}
			if db != "t_"+tenant {
				errs <- errors.New("wrong database " + db)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := r.prov.creates.Load(); n != 1 {
		t.Fatalf("provider Create called %d times for %d concurrent first connects, want 1", n, clients)
	}
}

func TestRestartKeepsTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	db := newCatalogDB(t)
	tenant := newTenant("keep")
	ctx := context.Background()

	r1 := startRouter(t, db)
	c1 := r1.connect(t, tenant)
	if _, err := c1.Exec(ctx, "INSERT INTO app_items VALUES (7, 'kept')"); err != nil {
		t.Fatal(err)
	}
	c1.Close(ctx)
	r1.stop()

	r2 := startRouter(t, db)
	c2 := r2.connect(t, tenant)
	if got := queryString(t, c2, "SELECT name FROM app_items WHERE id = 7"); got != "kept" {
		t.Fatalf("after restart: %q", got)
	}
	if n := r2.prov.creates.Load(); n != 0 {
		t.Fatalf("restarted router called Create %d times, want 0 (route from catalog)", n)
	}
	c2.Close(ctx)
	r2.stop()
	if !strings.Contains(r2.logs.String(), "via=catalog") {
		t.Errorf("log does not show a catalog route:\n%s", r2.logs.String())
	}
}

func TestWrongPasswordCreatesNothing(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("intruder")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err := pgx.Connect(ctx, r.dsn(tenant, "wrong-password"))
	if pgCode(err) != "28P01" {
		t.Fatalf("wrong password: %v, want 28P01", err)
	}
	if n := r.prov.creates.Load(); n != 0 {
		t.Fatalf("Create called %d times for an unauthenticated client", n)
	}
	if _, ok, _ := r.cat.Lookup(ctx, tenant); ok {
		t.Fatal("catalog has a row for an unauthenticated tenant")
	}
	r.stop()
	r.assertNoSecrets(t, "wrong-password")
}

func TestInvalidTenant(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, user := range []string{"Acme", "a.b", "-x", strings.Repeat("x", 60), `x"y`} {
		_, err := pgx.Connect(ctx, r.dsn(user, appSecret))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Hint, "tenant") {
			t.Errorf("user %q: %v, want 28000 with a hint on naming tenants", user, err)
		}
	}
	if n := r.prov.creates.Load(); n != 0 {
		t.Fatalf("Create called %d times for invalid tenants", n)
	}
}

func TestCancelRequest(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("cancel")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pc, err := pgconn.Connect(ctx, r.dsn(tenant, appSecret))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())

	// The key is the router's: its process ID is not the upstream
	// backend's (which every tenant can read in pg_stat_activity), and its
	// 4-byte secret is all random (TestCancelKeyLayout).
	res := pc.ExecParams(ctx, "SELECT pg_backend_pid()", nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if got := string(res.Rows[0][0]); got == itoa(pc.PID()) {
		t.Fatalf("BackendKeyData names the upstream backend %s", got)
	}
	if n := len(pc.SecretKey()); n != 4 {
		t.Fatalf("a protocol 3.0 client got a %d-byte secret", n)
	}

	done := r.sleepUpstream(t, ctx, pc)
	cancelAt := time.Now()
	if err := pc.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; pgCode(err) != "57014" {
		t.Fatalf("cancelled query: %v, want 57014", err)
	}
	if d := time.Since(cancelAt); d > time.Second {
		t.Fatalf("cancel took %s", d)
	}
	// The session is still usable.
	if res := pc.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil).Read(); res.Err != nil {
		t.Fatal(res.Err)
	}
}

func TestUnknownCancelKeyIgnored(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	c := rawConn(t, r.addr)
	if _, err := c.Write(cancelPacket(12345, 0xdeadbeef)); err != nil {
		t.Fatal(err)
	}
	if b, err := readAll(c); err != nil || len(b) != 0 {
		t.Fatalf("router answered an unknown cancel key with %q (err %v); want a silent close", b, err)
	}
}

func TestSessionParametersForwarded(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("params")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn(tenant, appSecret,
		"application_name=myapp", "timezone=Asia/Tokyo", "datestyle=SQL,DMY",
		"options=-c%20search_path%3Dpublic%2Cpg_catalog%20-c%20statement_timeout%3D1234"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for sql, want := range map[string]string{
		"SHOW application_name":  "myapp",
		"SHOW timezone":          "Asia/Tokyo",
		"SHOW datestyle":         "SQL, DMY",
		"SHOW search_path":       "public,pg_catalog",
		"SHOW statement_timeout": "1234ms",
	} {
		if got := queryString(t, conn, sql); got != want {
			t.Errorf("%s = %q, want %q", sql, got, want)
		}
	}
	// ParameterStatus from upstream reached the client.
	if got := conn.PgConn().ParameterStatus("TimeZone"); got != "Asia/Tokyo" {
		t.Errorf("ParameterStatus TimeZone = %q", got)
	}
	if got := conn.PgConn().ParameterStatus("server_version"); got == "" {
		t.Error("no server_version ParameterStatus")
	}
}

func TestSSLRequestDeclined(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := strings.Replace(r.dsn(newTenant("tls"), appSecret), "sslmode=disable", "sslmode=prefer", 1)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("sslmode=prefer: %v", err)
	}
	conn.Close(context.Background())
	dsn = strings.Replace(dsn, "sslmode=prefer", "sslmode=require", 1)
	if _, err := pgx.Connect(ctx, dsn); err == nil || !strings.Contains(err.Error(), "refused TLS") {
		t.Fatalf("sslmode=require: %v, want a TLS refusal", err)
	}
}

func TestCopyAndListenNotifyPassThrough(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("copy")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := r.connect(t, tenant)

	rows := make([][]any, 5000)
	for i := range rows {
		rows[i] = []any{int32(i), strings.Repeat("x", i%100)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"app_items"}, []string{"id", "name"}, pgx.CopyFromRows(rows))
	if err != nil || n != int64(len(rows)) {
		t.Fatalf("COPY FROM: %d rows, %v", n, err)
	}
	var out strings.Builder
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY app_items TO STDOUT")
	if err != nil || tag.RowsAffected() != int64(len(rows)) {
		t.Fatalf("COPY TO: %v %v", tag, err)
	}
	if lines := strings.Count(out.String(), "\n"); lines != len(rows) {
		t.Fatalf("COPY TO produced %d lines", lines)
	}

	listener := r.connect(t, tenant)
	if _, err := listener.Exec(ctx, "LISTEN jobs"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_notify('jobs', 'job 1')"); err != nil {
		t.Fatal(err)
	}
	note, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if note.Channel != "jobs" || note.Payload != "job 1" {
		t.Fatalf("notification %+v", note)
	}
}
