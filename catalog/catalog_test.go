package catalog_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// The catalog is the store a resolver reads and fills.
var _ resolver.Store = (*catalog.Catalog)(nil)

func mustKey(t *testing.T) []byte {
	t.Helper()
	key, err := catalog.ParseKey(catalog.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func openCatalog(t *testing.T, pool *pgxpool.Pool, key []byte) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.Open(t.Context(), pool, key)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

func endpoint(tenant, password string) provision.Endpoint {
	return provision.Endpoint{
		Host: "10.0.0.7", Port: 6543, Database: "db_" + tenant,
		User: "u_" + tenant, Password: password, ProviderID: "br-" + tenant,
	}
}

// created returns a create function for Catalog.Ensure that counts its calls.
func created(ep provision.Endpoint, calls *int) func(context.Context) (provision.Endpoint, error) {
	return func(context.Context) (provision.Endpoint, error) {
		*calls++
		return ep, nil
	}
}

func TestParseKey(t *testing.T) {
	good := catalog.NewKey()
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"NewKey", good, true},
		{"surrounding white space", "  " + good + "\n", true},
		{"empty", "", false},
		{"not base64", "correct-horse-battery-staple-is-not-base64!!", false},
		{"url encoding", strings.NewReplacer("+", "-", "/", "_").Replace(good) + "-_", false},
		{"16 bytes", "c2VjcmV0LWJ1dC1zaG9ydA==", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := catalog.ParseKey(tt.in)
			if tt.ok {
				if err != nil || len(key) != catalog.KeySize {
					t.Fatalf("ParseKey: %d bytes, %v", len(key), err)
				}
				return
			}
			if err == nil {
				t.Fatal("ParseKey accepted a bad key")
			}
			if tt.in != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.in)) {
				t.Errorf("error %q repeats the key", err)
			}
			if !strings.Contains(err.Error(), "32") || !strings.Contains(err.Error(), "base64") {
				t.Errorf("error %q does not say what a key looks like", err)
			}
		})
	}
	if catalog.NewKey() == good {
		t.Error("NewKey returned the same key twice")
	}
}

func TestOpenCatalogKeyLength(t *testing.T) {
	_, err := catalog.Open(t.Context(), nil, []byte("too short"))
	if err == nil || !strings.Contains(err.Error(), "32") {
		t.Fatalf("err = %v, want a complaint about the key length", err)
	}
}

func TestCatalogRoundTrip(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()

	if _, ok, err := cat.Lookup(ctx, "acme"); ok || err != nil {
		t.Fatalf("Lookup of a new tenant: %v, %v; want a miss", ok, err)
	}
	const password = "p@ss with 'quotes' and ünïcode"
	want := endpoint("acme", password)
	want.Provider = "fake" // the catalog records, and returns, which provider holds it
	calls := 0
	for i, wantCreated := range []bool{true, false} {
		ep, isNew, err := cat.Ensure(ctx, "acme", "fake", created(want, &calls))
		if err != nil || ep != want || isNew != wantCreated {
			t.Fatalf("Ensure #%d = %v (password ok: %v), %v, %v; want %v, %v, nil",
				i, ep, ep.Password == password, isNew, err, want, wantCreated)
		}
	}
	if calls != 1 {
		t.Errorf("create called %d times, want 1", calls)
	}
	ep, ok, err := cat.Lookup(ctx, "acme")
	if !ok || err != nil || ep != want {
		t.Fatalf("Lookup = %v, %v, %v; want %v", ep, ok, err, want)
	}

	// A second tenant with the same password gets a different ciphertext,
	// and no ciphertext contains the password.
	if _, _, err := cat.Ensure(ctx, "beta", "fake", created(endpoint("beta", password), &calls)); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT password_enc FROM pgtenant.tenants ORDER BY tenant`)
	if err != nil {
		t.Fatal(err)
	}
	var encs [][]byte
	for rows.Next() {
		var enc []byte
		if err := rows.Scan(&enc); err != nil {
			t.Fatal(err)
		}
		encs = append(encs, enc)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(encs) != 2 || bytes.Equal(encs[0], encs[1]) {
		t.Fatalf("ciphertexts %x: want two different ones", encs)
	}
	for _, enc := range encs {
		if bytes.Contains(enc, []byte(password)) || len(enc) != 12+len(password)+16 {
			t.Errorf("ciphertext %x: contains the password or is not nonce||ciphertext||tag", enc)
		}
	}
}

func TestCatalogCiphertextBoundToTenant(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()
	var calls int
	for _, tenant := range []string{"a", "b"} {
		if _, _, err := cat.Ensure(ctx, tenant, "fake", created(endpoint(tenant, "pw-"+tenant), &calls)); err != nil {
			t.Fatal(err)
		}
	}
	// Give row a the ciphertext of row b.
	if _, err := pool.Exec(ctx, `UPDATE pgtenant.tenants SET password_enc =
		(SELECT password_enc FROM pgtenant.tenants WHERE tenant = 'b') WHERE tenant = 'a'`); err != nil {
		t.Fatal(err)
	}
	_, ok, err := cat.Lookup(ctx, "a")
	if !errors.Is(err, catalog.ErrKeyMismatch) || ok {
		t.Fatalf("Lookup of a swapped row: %v, %v; want ErrKeyMismatch", ok, err)
	}
	if strings.Contains(err.Error(), "pw-") {
		t.Errorf("error %q contains a password", err)
	}
}

func TestOpenCatalogWrongKey(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	ctx := t.Context()
	cat := openCatalog(t, pool, mustKey(t))
	var calls int
	if _, _, err := cat.Ensure(ctx, "acme", "fake", created(endpoint("acme", "pw"), &calls)); err != nil {
		t.Fatal(err)
	}

	wrong := mustKey(t)
	_, err := catalog.Open(ctx, pool, wrong)
	if !errors.Is(err, catalog.ErrKeyMismatch) || !strings.Contains(err.Error(), "catalog key does not match") {
		t.Fatalf("Open with another key: %v; want ErrKeyMismatch", err)
	}

	// Without the key check row, the wrong key is still caught per row.
	if _, err := pool.Exec(ctx, `DELETE FROM pgtenant.meta`); err != nil {
		t.Fatal(err)
	}
	other := openCatalog(t, pool, wrong)
	_, _, err = other.Lookup(ctx, "acme")
	if !errors.Is(err, catalog.ErrKeyMismatch) || !strings.Contains(err.Error(), `"acme"`) {
		t.Fatalf("Lookup with another key: %v; want ErrKeyMismatch naming the tenant", err)
	}
}

func TestOpenCatalogConcurrently(t *testing.T) {
	pgtest.CheckGoroutines(t)
	dsn := pgtest.NewDB(t)
	key := mustKey(t)
	const instances = 6
	errs := make([]error, instances)
	var wg sync.WaitGroup
	for i := range instances {
		pool := pgtest.NewPool(t, dsn) // one pool per router instance
		wg.Go(func() { _, errs[i] = catalog.Open(t.Context(), pool, key) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func TestCatalogDeleteAndList(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	cat := openCatalog(t, pool, mustKey(t))
	ctx := t.Context()
	var calls int
	tenants := []string{"delta", "alpha", "charlie", "bravo"}
	for _, tenant := range tenants {
		if _, _, err := cat.Ensure(ctx, tenant, "fake", created(endpoint(tenant, "pw"), &calls)); err != nil {
			t.Fatal(err)
		}
	}

	if err := cat.Delete(ctx, "bravo"); err != nil {
		t.Fatal(err)
	}
	if err := cat.Delete(ctx, "bravo"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("second Delete: %v, want ErrTenantNotFound", err)
	}
	if err := cat.Delete(ctx, "nobody"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("Delete of an unknown tenant: %v, want ErrTenantNotFound", err)
	}
	if _, ok, err := cat.Lookup(ctx, "bravo"); ok || err != nil {
		t.Errorf("Lookup after Delete: %v, %v; want a miss", ok, err)
	}
	var enc []byte
	if err := pool.QueryRow(ctx, `SELECT password_enc FROM pgtenant.tenants WHERE tenant = 'bravo'`).Scan(&enc); err != nil || enc != nil {
		t.Errorf("deleted row keeps its password (%x, %v)", enc, err)
	}

	type page struct {
		after   string
		limit   int
		tenants []string
	}
	for _, p := range []page{
		{"", 0, []string{"alpha", "bravo", "charlie", "delta"}},
		{"", 2, []string{"alpha", "bravo"}},
		{"bravo", 2, []string{"charlie", "delta"}},
		{"delta", 2, nil},
	} {
		entries, err := cat.List(ctx, p.after, p.limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.Tenant)
			wantState := "ready"
			if e.Tenant == "bravo" {
				wantState = "deleted"
			}
			want := endpoint(e.Tenant, "")
			if e.State != wantState || e.Provider != "fake" || e.Host != want.Host || e.Port != want.Port ||
				e.Database != want.Database || e.User != want.User || e.ProviderID != want.ProviderID ||
				e.CreatedAt.IsZero() || e.UpdatedAt.Before(e.CreatedAt) {
				t.Errorf("List entry %+v does not match what was stored", e)
			}
		}
		if strings.Join(got, ",") != strings.Join(p.tenants, ",") {
			t.Errorf("List(%q, %d) = %v, want %v", p.after, p.limit, got, p.tenants)
		}
	}

	// Ensure brings a deleted tenant back, calling create again.
	calls = 0
	if _, isNew, err := cat.Ensure(ctx, "bravo", "fake", created(endpoint("bravo", "new"), &calls)); err != nil || !isNew || calls != 1 {
		t.Fatalf("Ensure after Delete: created %v, %v, %d calls; want a new creation", isNew, err, calls)
	}
	if ep, ok, err := cat.Lookup(ctx, "bravo"); !ok || err != nil || ep.Password != "new" {
		t.Fatalf("Lookup after re-creation: %v, %v (password ok: %v)", ok, err, ep.Password == "new")
	}
}
