package router_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/router"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// start runs a router from cfg's defaults on the shared test cluster, with
// a catalog database of its own, until the test ends.
func start(t *testing.T, edit func(*router.Config)) (*router.Router, router.Config) {
	t.Helper()
	c := pgtest.Shared(t)
	cfg := router.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = "router-test-secret"
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Catalog.DSN = c.AdminDSN(pgtest.CreateDB(t, c))
	cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
	cfg.Provider.Local.Prefix = "rt_"
	cfg.DrainTimeout = 0
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := router.New(ctx, cfg, router.Options{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r, cfg
}

func connect(r *router.Router, tenant string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://"+tenant+":router-test-secret@"+r.Addr().String()+"/app?sslmode=disable")
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// A tenant taken off blocked_tenants by a reload (SIGHUP) is let in again
// at once; one put on it is refused, and the catalog's list still counts.
func TestReloadBlockedTenants(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, func(c *router.Config) { c.BlockedTenants = []string{"acme"} })
	ctx := context.Background()
	if err := connect(r, "acme"); sqlState(err) != "28000" {
		t.Fatalf("acme blocked by the file: %v", err)
	}
	if err := r.Catalog().Block(ctx, "initech"); err != nil {
		t.Fatal(err)
	}

	next := cfg
	next.BlockedTenants = []string{"globex"}
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := connect(r, "acme"); err != nil {
		t.Fatalf("acme after the reload took it off blocked_tenants: %v", err)
	}
	if err := connect(r, "globex"); sqlState(err) != "28000" {
		t.Fatalf("globex after the reload put it on blocked_tenants: %v", err)
	}
	if err := connect(r, "initech"); sqlState(err) != "28000" {
		t.Fatalf("initech, blocked in the catalog: %v", err)
	}
	if got := r.Proxy().Blocked(); len(got) != 2 || got[0] != "globex" || got[1] != "initech" {
		t.Fatalf("Blocked() = %q", got)
	}
}

// New refuses an invalid configuration with every reason, before it opens
// anything.
func TestNewValidates(t *testing.T) {
	cfg := router.DefaultConfig()
	cfg.Log.Format = "xml"
	_, err := router.New(context.Background(), cfg, router.Options{})
	if err == nil {
		t.Fatal("New accepted an invalid configuration")
	}
	for _, want := range []string{"log.format", router.EnvPassword, router.EnvCatalogKey} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}
