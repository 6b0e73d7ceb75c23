package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/router"
)

// auth.tenant_secret applies on reload (SIGHUP), which also reads the
// tenants' own secrets again.
func TestReloadTenantSecret(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, func(c *router.Config) { c.Auth.PerTenant, c.Auth.PerTenantRefresh = true, 0 })
	ctx := context.Background()
	tenant := "rs" + time.Now().Format("150405.000000")[7:]
	if err := connect(r, tenant); err != nil {
		t.Fatal(err)
	}
	v, err := proxy.NewTenantVerifier("reload-pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Catalog().SetCredential(ctx, tenant, v); err != nil { // as another instance would
		t.Fatal(err)
	}
	own := func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		conn, err := pgx.Connect(cctx, "postgres://"+tenant+":reload-pw@"+r.Addr().String()+"/app?sslmode=disable")
		if err == nil {
			_ = conn.Close(cctx)
		}
		return err
	}
	if err := own(); sqlState(err) != "28P01" {
		t.Fatalf("own secret before this router read it: %v, want 28P01 (per_tenant_refresh is off)", err)
	}

	next := cfg
	next.Auth.TenantSecret = proxy.TenantSecretInstead
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := own(); err != nil {
		t.Fatalf("own secret after the reload read it: %v", err)
	}
	if err := connect(r, tenant); sqlState(err) != "28P01" {
		t.Fatalf("app secret after reloading tenant_secret: instead: %v, want 28P01", err)
	}
	next.Auth.TenantSecret = proxy.TenantSecretBesides
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := connect(r, tenant); err != nil {
		t.Fatalf("app secret after reloading tenant_secret: besides: %v", err)
	}
}
