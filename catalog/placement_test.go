package catalog_test

import (
	"errors"
	"testing"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
)

func TestPlacement(t *testing.T) {
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()

	if _, ok, err := cat.Placement(ctx, "a"); ok || err != nil {
		t.Fatalf("Placement of an unplaced tenant: %v, %v", ok, err)
	}
	if err := cat.Place(ctx, "a", "rds"); err != nil {
		t.Fatal(err)
	}
	if p, ok, err := cat.Placement(ctx, "a"); p != "rds" || !ok || err != nil {
		t.Fatalf("Placement = %q, %v, %v; want rds", p, ok, err)
	}
	// Ensure with the default provider is turned away to the placed one.
	calls := 0
	_, _, err := cat.Ensure(ctx, "a", "local", created(endpoint("a", "pw"), &calls))
	var pe *catalog.PlacedError
	if !errors.As(err, &pe) || pe.Provider != "rds" || calls != 0 {
		t.Fatalf("Ensure on the default provider: %v (calls %d); want a PlacedError naming rds", err, calls)
	}
	if _, created, err := cat.Ensure(ctx, "a", "rds", created(endpoint("a", "pw"), &calls)); err != nil || !created {
		t.Fatalf("Ensure on the placed provider: %v, %v", created, err)
	}
	// Once created, the tenant stays where it is.
	if err := cat.Place(ctx, "a", "local"); !errors.Is(err, catalog.ErrOtherProvider) {
		t.Fatalf("Place after creation elsewhere: %v, want ErrOtherProvider", err)
	}
	if err := cat.Place(ctx, "a", "rds"); err != nil {
		t.Fatalf("Place where it is: %v", err)
	}
	if had, err := cat.Unplace(ctx, "a"); !had || err != nil {
		t.Fatalf("Unplace = %v, %v", had, err)
	}
	if had, err := cat.Unplace(ctx, "a"); had || err != nil {
		t.Fatalf("second Unplace = %v, %v", had, err)
	}
}

func TestStaticRoutes(t *testing.T) {
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()

	ep := endpoint("s", "secret")
	ep.TLS = "verify-full"
	ep.ProviderID = "registered"
	if err := cat.SetRoute(ctx, "s", "static", ep); err != nil {
		t.Fatal(err)
	}
	got, ok, err := cat.RouteOn(ctx, "s", "static", "registered")
	ep.Provider = "static"
	if !ok || err != nil || got != ep {
		t.Fatalf("RouteOn = %+v, %v, %v; want %+v", got, ok, err, ep)
	}
	if _, ok, _ := cat.RouteOn(ctx, "s", "local", "registered"); ok {
		t.Fatal("RouteOn another provider found the route")
	}
	var enc []byte
	if err := pool.QueryRow(ctx, `SELECT password_enc FROM pgtenant.tenants WHERE tenant = 's'`).Scan(&enc); err != nil || string(enc) == "secret" {
		t.Fatalf("password stored in clear (or %v)", err)
	}
	// A tenant on another provider takes no route, and a placed one neither.
	calls := 0
	if _, _, err := cat.Ensure(ctx, "l", "local", created(endpoint("l", "pw"), &calls)); err != nil {
		t.Fatal(err)
	}
	if err := cat.SetRoute(ctx, "l", "static", ep); !errors.Is(err, catalog.ErrOtherProvider) {
		t.Fatalf("SetRoute over a local tenant: %v", err)
	}
	if err := cat.Place(ctx, "p", "local"); err != nil {
		t.Fatal(err)
	}
	if err := cat.SetRoute(ctx, "p", "static", ep); !errors.Is(err, catalog.ErrOtherProvider) {
		t.Fatalf("SetRoute over a placement: %v", err)
	}
	if n, err := cat.CountOn(ctx, "s", "static"); n != 1 || err != nil {
		t.Fatalf("CountOn = %d, %v", n, err)
	}
	if err := cat.DeleteRouteOn(ctx, "s", "static", "registered"); err != nil {
		t.Fatal(err)
	}
	if err := cat.DeleteRouteOn(ctx, "s", "static", "registered"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Fatalf("second DeleteRouteOn: %v", err)
	}
	if n, err := cat.CountOn(ctx, "s", "static"); n != 0 || err != nil {
		t.Fatalf("CountOn after delete = %d, %v", n, err)
	}
}
