package proxy_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/proxy"
)

// pgErr returns err's PgError or fails t.
func pgErr(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var e *pgconn.PgError
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("got %v, want SQLSTATE %s", err, code)
	}
	return e
}

// tryConnect connects with dsn; the caller closes the connection.
func tryConnect(dsn string) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return pgconn.Connect(ctx, dsn)
}

// eventually retries connecting with dsn until it works (a slot given back
// when a session ends is given back asynchronously).
func eventually(t *testing.T, dsn string) *pgconn.PgConn {
	t.Helper()
	var c *pgconn.PgConn
	poll.Until(t, 10*time.Second, "a connection to be admitted", func() bool {
		var err error
		c, err = tryConnect(dsn)
		return err == nil
	})
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// startupOnly sends a StartupMessage for user on a raw connection and reads
// the AuthenticationSASL request, leaving the client mid-authentication.
func startupOnly(t *testing.T, addr, user string) {
	t.Helper()
	c := rawConn(t, addr)
	body := binary.BigEndian.AppendUint32(nil, 3<<16)
	for _, s := range []string{"user", user, "database", "app", ""} {
		body = append(append(body, s...), 0)
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0] != 'R' {
		t.Fatalf("%q %v", hdr, err)
	}
	if _, err := io.ReadFull(c, make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)); err != nil {
		t.Fatal(err)
	}
}

func TestConnectionCaps(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) {
		c.Limits = proxy.Limits{MaxConnections: 3, MaxConnectionsPerTenant: 2}
	})
	a, b, c := newTenant("capa"), newTenant("capb"), newTenant("capc")
	a1 := r.connect(t, a)
	r.connect(t, a)

	// Clients that have not authenticated take no tenant slot: one stalled
	// mid-authentication, one with a wrong password (told so, not 53300).
	startupOnly(t, r.addr, a)
	if _, err := tryConnect(r.dsn(a, "wrong")); pgCode(err) != "28P01" {
		t.Fatalf("wrong password at the tenant cap: %v, want 28P01", err)
	}

	_, err := tryConnect(r.dsn(a, appSecret))
	if e := pgErr(t, err, "53300"); !strings.Contains(e.Message, `too many connections for tenant "`+a+`" (limit 2)`) {
		t.Fatalf("per-tenant refusal: %q", e.Message)
	}
	r.connect(t, b) // another tenant is not affected: 3 sessions now
	_, err = tryConnect(r.dsn(c, appSecret))
	if e := pgErr(t, err, "53300"); e.Message != "router connection limit (3) reached" {
		t.Fatalf("global refusal: %q", e.Message)
	}

	// A session's end gives its slot back.
	a1.Close(context.Background())
	eventually(t, r.dsn(c, appSecret))

	// Limits change at runtime.
	r.srv.SetLimits(proxy.Limits{})
	r.connect(t, a)
	if got := r.srv.Limits(); got != (proxy.Limits{}) {
		t.Fatalf("Limits() = %+v", got)
	}
}

func TestHandshakeCap(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.Limits.MaxHandshakes = 1 })
	// The first client is mid-startup (its SSLRequest was answered).
	first := rawConn(t, r.addr)
	if _, err := first.Write(sslRequest); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(first, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	// The second is refused at once, before it sends anything.
	e := readError(t, rawConn(t, r.addr))
	if e.Code != "53300" || e.Message != "too many connections starting up (limit 1)" {
		t.Fatalf("%s %q", e.Code, e.Message)
	}
	_ = first.Close()
	eventually(t, r.dsn(newTenant("hs"), appSecret))
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestAuthBackoff(t *testing.T) {
	pgtest.CheckGoroutines(t)
	clock := &fakeClock{}
	clock.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) {
		c.Now = clock.now
		c.Limits.AuthBackoff = proxy.AuthBackoff{Threshold: 2, Initial: time.Second, Max: 4 * time.Second}
	})
	x, y := newTenant("bfx"), newTenant("bfy")
	const wrong = "password authentication failed"
	const throttled = "too many failed authentication attempts"
	try := func(tenant, password, want string) {
		t.Helper()
		c, err := tryConnect(r.dsn(tenant, password))
		if want == "" {
			if err != nil {
				t.Fatalf("%s with the right password: %v", tenant, err)
			}
			c.Close(context.Background())
			return
		}
		if e := pgErr(t, err, "28P01"); !strings.Contains(e.Message, want) {
			t.Fatalf("%s: %q, want %q", tenant, e.Message, want)
		}
	}

	try(x, "nope", wrong)
	try(x, "nope", wrong) // the 2nd failure: refused for 1s
	try(x, appSecret, throttled)
	try(x, "nope", throttled) // same answer, right password or not
	try(y, appSecret, "")     // same address, another tenant: not throttled

	clock.advance(time.Second)
	try(x, appSecret, "") // a success clears the failures
	try(x, "nope", wrong)
	try(x, "nope", wrong) // 2 failures again: 1s
	clock.advance(time.Second)
	try(x, "nope", wrong) // 3rd: 2s
	clock.advance(time.Second)
	try(x, appSecret, "retry in 1s")
	clock.advance(time.Second)
	try(x, appSecret, "")
	if n := r.prov.creates.Load(); n != 2 {
		t.Fatalf("Create called %d times, want 2 (x and y, once each)", n)
	}
	r.stop()
	r.assertNoSecrets(t)
}

func TestBlockList(t *testing.T) {
	pgtest.CheckGoroutines(t)
	static := newTenant("blks")
	r := startRouter(t, newCatalogDB(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.srv.SetBlocked([]string{static})
	if _, err := tryConnect(r.dsn(static, appSecret)); pgCode(err) != "28000" {
		t.Fatalf("blocked tenant: %v", err)
	}
	a, b, live := newTenant("blka"), newTenant("blkb"), newTenant("blkl")
	conn := r.connect(t, live)
	other := r.connect(t, b)

	r.srv.SetBlocked([]string{live, a})
	_, err := conn.Exec(ctx, "SELECT 1")
	if e := pgErr(t, err, "57P01"); !strings.Contains(e.Message, `tenant "`+live+`" was blocked by an administrator`) {
		t.Fatalf("live session of a blocked tenant: %q", e.Message)
	}
	if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("session of an unblocked tenant: %v", err)
	}
	_, err = tryConnect(r.dsn(a, appSecret))
	if e := pgErr(t, err, "28000"); e.Message != `tenant "`+a+`" is blocked` {
		t.Fatalf("blocked tenant: %q", e.Message)
	}
	// Only after authentication: a wrong password is told just that.
	if _, err := tryConnect(r.dsn(a, "nope")); pgCode(err) != "28P01" {
		t.Fatalf("blocked tenant, wrong password: %v", err)
	}
	if got := r.srv.Blocked(); !slices.Equal(got, slices.Sorted(slices.Values([]string{live, a}))) {
		t.Fatalf("Blocked() = %q", got)
	}
	if _, ok, _ := r.cat.Lookup(ctx, a); ok {
		t.Fatal("a blocked tenant was created")
	}

	// SetBlocked replaces the whole list (what belongs on it is the router
	// package's rule: a SIGHUP that takes a tenant off blocked_tenants must
	// let it in again).
	r.srv.SetBlocked(nil)
	r.connect(t, a)
	r.connect(t, static)
	if got := r.srv.Blocked(); len(got) != 0 {
		t.Fatalf("Blocked() = %q after SetBlocked(nil)", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	pgtest.CheckGoroutines(t)
	const idle = 300 * time.Millisecond
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) { c.Limits.IdleTimeout = idle })
	tenant := newTenant("idle")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	conn := r.connect(t, tenant)
	// A query running longer than the timeout is not idleness.
	if _, err := conn.Exec(ctx, "SELECT pg_sleep(0.6)"); err != nil {
		t.Fatalf("long query: %v", err)
	}
	start := time.Now()
	err := conn.PgConn().WaitForNotification(ctx) // reads until the router ends the session
	e := pgErr(t, err, "57P05")
	if e.Message != "terminating connection due to idle-session timeout" || e.Severity != "FATAL" {
		t.Fatalf("%s %q", e.Severity, e.Message)
	}
	if d := time.Since(start); d < idle-50*time.Millisecond || d > 10*idle {
		t.Fatalf("ended after %s, timeout %s", d, idle)
	}

	tx := r.connect(t, tenant)
	if _, err := tx.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pgErr(t, tx.PgConn().WaitForNotification(ctx), "25P03")
}

func TestTenantCarriers(t *testing.T) {
	pgtest.CheckGoroutines(t)
	tt := newTestTLS(t)
	r := startRouter(t, newCatalogDB(t), withTLS(proxy.TLSModeAllow, tt), func(c *proxy.Config) {
		c.Tenant = proxy.TenantConfig{
			Separator: ".",
			Carriers:  []string{proxy.CarrierUser, proxy.CarrierOptions, proxy.CarrierSNI, proxy.CarrierDatabase},
			SNISuffix: ".db.example.com",
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// No database in the DSN: pgx then sends none (the database carrier is on).
	dsn := func(user, extra string) string {
		return "postgres://" + user + ":" + appSecret + "@" + r.addr + "/?sslmode=disable" + extra
	}
	currentDB := func(conn *pgx.Conn) string { return queryString(t, conn, "SELECT current_database()") }

	t.Run("options, not forwarded", func(t *testing.T) {
		tenant := newTenant("opt")
		conn, err := pgx.Connect(ctx, dsn("app", "&options=-c%20statement_timeout%3D1234%20-c%20tenant%3D"+tenant))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if got := currentDB(conn); got != "t_"+tenant {
			t.Fatalf("database %q", got)
		}
		if got := queryString(t, conn, "SHOW statement_timeout"); got != "1234ms" {
			t.Fatalf("other options not forwarded: statement_timeout = %q", got)
		}
		var v *string
		if err := conn.QueryRow(ctx, "SELECT current_setting('tenant', true)").Scan(&v); err != nil || v != nil {
			t.Fatalf("tenant option reached the upstream: %v %v", v, err)
		}
		conn2, err := pgx.Connect(ctx, dsn("app", "&options=tenant%3D"+tenant))
		if err != nil {
			t.Fatalf("bare tenant=: %v", err)
		}
		conn2.Close(ctx)
	})
	t.Run("database", func(t *testing.T) {
		tenant := newTenant("db")
		conn, err := pgx.Connect(ctx, "postgres://app:"+appSecret+"@"+r.addr+"/"+tenant+"?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if got := currentDB(conn); got != "t_"+tenant {
			t.Fatalf("database %q", got)
		}
	})
	t.Run("sni", func(t *testing.T) {
		tenant := newTenant("sni")
		conn := connectTLS(t, "postgres://app:"+appSecret+"@"+r.addr+"/?sslmode=require", func(c *pgx.ConnConfig) {
			c.TLSConfig.ServerName = tenant + ".db.example.com"
		})
		if got := currentDB(conn); got != "t_"+tenant {
			t.Fatalf("database %q", got)
		}
	})
	t.Run("agreeing carriers", func(t *testing.T) {
		tenant := newTenant("agree")
		conn, err := pgx.Connect(ctx, "postgres://app."+tenant+":"+appSecret+"@"+r.addr+"/"+tenant+"?sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	})
	t.Run("conflict names both", func(t *testing.T) {
		_, err := pgx.Connect(ctx, dsn("app.alpha", "&options=-c%20tenant%3Dbeta"))
		e := pgErr(t, err, "28000")
		for _, s := range []string{"user name", `"alpha"`, "options parameter", `"beta"`} {
			if !strings.Contains(e.Message, s) {
				t.Errorf("message %q does not name %s", e.Message, s)
			}
		}
	})
	t.Run("missing lists every way", func(t *testing.T) {
		_, err := pgx.Connect(ctx, dsn("app", ""))
		e := pgErr(t, err, "28000")
		for _, s := range []string{"user name", "<role>.tenant_42", "-c tenant=tenant_42", "tenant_42.db.example.com", "database name"} {
			if !strings.Contains(e.Hint, s) {
				t.Errorf("hint %q does not mention %s", e.Hint, s)
			}
		}
	})
}
