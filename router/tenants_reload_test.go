package router_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// tenant.create, tenant.max_tenants and tenant.creates_per_minute apply on
// reload (SIGHUP): an operator can stop creations without a restart.
func TestReloadTenantCreation(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, nil)
	ctx := context.Background()
	name := func(i int) string { return fmt.Sprintf("rl%d-%d", time.Now().UnixNano()%1e9, i) }
	first := name(1)
	if err := connect(r, first); err != nil {
		t.Fatalf("auto: %v", err)
	}

	next := cfg
	next.Tenant.Create = "api"
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if err := connect(r, name(2)); sqlState(err) != "28P01" {
		t.Fatalf("new tenant after reloading tenant.create: api: %v, want 28P01", err)
	}
	if err := connect(r, first); err != nil {
		t.Fatalf("existing tenant after reloading tenant.create: api: %v", err)
	}

	next.Tenant.Create, next.Tenant.MaxTenants = "auto", 1
	if err := r.Reload(ctx, next); err != nil {
		t.Fatal(err)
	}
	if got := r.Catalog().CreateLimits(); got != (catalog.CreateLimits{MaxTenants: 1}) {
		t.Fatalf("catalog limits after reload: %+v", got)
	}
	if err := connect(r, name(3)); sqlState(err) != "53400" {
		t.Fatalf("second tenant with max_tenants 1: %v, want 53400", err)
	}
}
