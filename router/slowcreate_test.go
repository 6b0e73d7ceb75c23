package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/internal/slowprov"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// Slow providers (Aurora, RDS: minutes per tenant), played by the local
// provider behind slowprov: real routers, real pgx clients.

const slowSecret = "slow-create-secret"

// slowFleet is one catalog and one slow provider that routers share.
type slowFleet struct {
	prov   *slowprov.Provider
	catDSN string
	admin  string // the local provider's admin DSN
	key    string
	pool   *pgxpool.Pool // the local provider's admin pool
}

func newSlowFleet(t *testing.T) *slowFleet {
	t.Helper()
	c := pgtest.Shared(t)
	pool := pgtest.NewPool(t, c.AdminDSN("postgres"))
	lp := local.New(local.Config{Prefix: "slow_"}, pool)
	if _, err := lp.EnsureTemplate(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	return &slowFleet{prov: slowprov.New(lp, 10*time.Minute), catDSN: c.AdminDSN(pgtest.CreateDB(t, c)), admin: c.AdminDSN("postgres"), key: catalog.NewKey(), pool: pool}
}

// start runs a router of the fleet until the test ends.
func (f *slowFleet) start(t *testing.T, edit func(*router.Config)) *router.Router {
	t.Helper()
	r, _ := f.startStoppable(t, edit)
	return r
}

// startStoppable is start that also returns a stop function (which the
// test's end calls too, then doing nothing).
func (f *slowFleet) startStoppable(t *testing.T, edit func(*router.Config)) (*router.Router, func()) {
	t.Helper()
	cfg := router.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = slowSecret
	cfg.Catalog.Key = f.key
	cfg.Catalog.DSN = f.catDSN
	cfg.Provider.Local.AdminDSN = f.admin // validated; the provider is f.prov
	cfg.DrainTimeout = 0
	cfg.Limits.MaxHandshakes = 0
	cfg.Limits.AuthBackoff.Threshold = 0
	// Short enough for tests; without background creations a connect
	// would wait this long for the held Create instead.
	cfg.ConnectTimeout = 20 * time.Second
	cfg.Tenant.CreateWait = 200 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := router.New(ctx, cfg, router.Options{Upstream: &router.Upstream{Provider: f.prov, Close: func() {}}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

// slowConnect connects to tenant through r and closes the connection.
func slowConnect(r *router.Router, tenant string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":"+slowSecret+"@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		return err
	}
	var one int
	err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	return errors.Join(err, conn.Close(ctx))
}

// wantCreating checks that err is the 57P03 of a tenant being created.
func wantCreating(t *testing.T, err error, tenant string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" ||
		pgErr.Message != "tenant "+tenant+" is being created (about 10 minutes), retry" ||
		!strings.Contains(pgErr.Hint, "pgtenant tenants warm") {
		t.Fatalf("connect: %v, want 57P03 tenant %s is being created (about 10 minutes), retry", err, tenant)
	}
}

// gauge is the value of the metric name (no labels) in r's registry.
func gauge(t *testing.T, r *router.Router, name string) float64 {
	t.Helper()
	mfs, err := r.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		for _, v := range []*dto.Gauge{m.GetGauge()} {
			if v != nil {
				return v.GetValue()
			}
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// The first connect gets 57P03 "being created" after create_wait, not after
// the creation; 20 more at once get the same, with one Create in all; once
// it is done clients connect.
func TestSlowCreateAnswers57P03(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newSlowFleet(t)
	r := f.start(t, nil)
	wantCreating(t, slowConnect(r, "acme"), "acme")
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() { errs[i] = slowConnect(r, "acme") })
	}
	wg.Wait()
	for _, err := range errs {
		wantCreating(t, err, "acme")
	}
	if n := f.prov.Calls(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	if v := gauge(t, r, "pgtenant_resolver_background_creates_in_flight"); v != 1 {
		t.Fatalf("background creates in flight %v, want 1", v)
	}
	f.prov.Release()
	poll.Until(t, 30*time.Second, "a connect after the creation", func() bool { return slowConnect(r, "acme") == nil })
	if n := f.prov.Calls(); n != 1 {
		t.Fatalf("Create called %d times, want 1", n)
	}
	if v := gauge(t, r, "pgtenant_resolver_background_creates_in_flight"); v != 0 {
		t.Fatalf("background creates in flight %v, want 0", v)
	}
}

// Two routers on one catalog: one creates, both answer 57P03 meanwhile,
// and both route once it is done.
func TestSlowCreateTwoRouters(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newSlowFleet(t)
	a, b := f.start(t, nil), f.start(t, nil)
	for _, r := range []*router.Router{a, b, b, a} {
		wantCreating(t, slowConnect(r, "acme"), "acme")
	}
	if n := f.prov.Calls(); n != 1 {
		t.Fatalf("Create called %d times over two routers, want 1", n)
	}
	f.prov.Release()
	for _, r := range []*router.Router{a, b} {
		poll.Until(t, 30*time.Second, "a connect after the creation", func() bool { return slowConnect(r, "acme") == nil })
	}
	if n := f.prov.Calls(); n != 1 {
		t.Fatalf("Create called %d times over two routers, want 1", n)
	}
}

// A failed background creation: the next connect is told it failed; after
// cache.negative_ttl a connect starts a new one, which succeeds.
func TestSlowCreateFails(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newSlowFleet(t)
	r := f.start(t, func(c *router.Config) {
		c.Tenant.CreateWait = 10 * time.Second // the failure comes first
		c.Cache.NegativeTTL = 300 * time.Millisecond
	})
	f.prov.Fail(errors.New("InsufficientDBInstanceCapacity"))
	f.prov.Release()
	err := slowConnect(r, "acme")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" || pgErr.Message != "the creation of tenant acme failed" {
		t.Fatalf("connect: %v, want 57P03 the creation of tenant acme failed", err)
	}
	if strings.Contains(pgErr.Message+pgErr.Hint+pgErr.Detail, "Insufficient") {
		t.Fatal("the provider's error reached the client")
	}
	if v := gauge(t, r, "pgtenant_resolver_background_create_failures_total"); v != 1 {
		t.Fatalf("background create failures %v, want 1", v)
	}
	f.prov.Fail(nil)
	poll.Until(t, 30*time.Second, "a connect after a new creation", func() bool { return slowConnect(r, "acme") == nil })
	if n := f.prov.Calls(); n != 2 {
		t.Fatalf("Create called %d times, want 2", n)
	}
}

// A router that stops while it creates a tenant (as in a crash, it cannot
// finish) leaves the creation claimed in the catalog; once its lease has
// passed, another router's connect takes it over and the tenant is
// created (the provider adopts by name).
func TestSlowCreateTakenOver(t *testing.T) {
	pgtest.CheckGoroutines(t)
	f := newSlowFleet(t)
	// a's lease counts (it is recorded with its claim), not b's.
	a, stopA := f.startStoppable(t, func(c *router.Config) { c.Tenant.CreateLease = 300 * time.Millisecond })
	b := f.start(t, nil)
	wantCreating(t, slowConnect(a, "acme"), "acme")
	wantCreating(t, slowConnect(b, "acme"), "acme")
	stopA()
	f.prov.Release()
	poll.Until(t, 30*time.Second, "router b to take the creation over", func() bool { return slowConnect(b, "acme") == nil })
	if n := f.prov.Calls(); n != 2 {
		t.Fatalf("Create called %d times, want 2 (the stopped router's, the takeover)", n)
	}
}
