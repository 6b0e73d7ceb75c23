package providertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/router"
)

// Backend is what a provider's test hands the suite: the provider and the
// ways to look behind it.
type Backend struct {
	// Provider is the provider under test.
	Provider provision.Provider
	// Count returns how many databases (projects, clusters, branches,
	// routes) the backend holds for tenant. The suite wants 0 or 1.
	Count func(ctx context.Context, tenant string) (int, error)
	// LoseCreateResponse, when set, makes the backend carry out the next
	// create request for tenant and then lose its answer (a timeout, a
	// reset connection). Nil skips that test, with SkipLost as the reason.
	LoseCreateResponse func(tenant string)
	// SkipLost says why LoseCreateResponse is nil.
	SkipLost string
	// Prepare, when set, runs before the first Create of each tenant the
	// suite uses: for providers that only find what exists (static), it
	// registers the tenant's route.
	Prepare func(ctx context.Context, tenant string) error
	// Finds says the provider only finds what exists (static): Prepare
	// makes what Count counts, so Count is 1 from Prepare on, and the
	// suite checks that Create adds nothing rather than that it adds one.
	Finds bool
	// Upstream is how a router reaches the provider's endpoints (the
	// proxy's TLS settings and roots, a dial override). The suite sets its
	// Provider and CatalogDSN.
	Upstream router.Upstream
	// Timeout bounds one Create and the wait for a tenant to answer
	// through the router. Zero means 2 minutes.
	Timeout time.Duration
}

func (b *Backend) timeout() time.Duration {
	if b.Timeout <= 0 {
		return 2 * time.Minute
	}
	return b.Timeout
}

// Concurrency is how many Creates of one tenant run at once in the
// concurrent-create test.
const Concurrency = 50

// Run runs the conformance suite against b, each check as a subtest.
func Run(t *testing.T, b Backend) {
	t.Helper()
	if b.Provider == nil || b.Count == nil {
		t.Fatal("providertest: Backend needs a Provider and a Count")
	}
	t.Run("CreateIsIdempotent", func(t *testing.T) { createIsIdempotent(t, &b) })
	t.Run("ConcurrentCreates", func(t *testing.T) { concurrentCreates(t, &b) })
	t.Run("LostCreateResponse", func(t *testing.T) { lostCreateResponse(t, &b) })
	t.Run("DeleteTwice", func(t *testing.T) { deleteTwice(t, &b) })
	t.Run("EndToEnd", func(t *testing.T) { endToEnd(t, &b) })
}

// Tenant returns a new tenant ID, unique to this run: lower-case letters
// and digits, starting with a letter, short enough for every provider's
// naming rules (RDS identifiers, Supabase project names, Neon branches).
func Tenant(t testing.TB) string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "ct" + hex.EncodeToString(b[:])
}

// newTenant returns a fresh tenant, prepared, and deletes it after the test.
func (b *Backend) newTenant(t *testing.T) string {
	t.Helper()
	tenant := Tenant(t)
	if b.Prepare != nil {
		if err := b.Prepare(t.Context(), tenant); err != nil {
			t.Fatalf("Prepare(%s): %v", tenant, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout())
		defer cancel()
		if err := b.Provider.Delete(ctx, tenant); err != nil && !errors.Is(err, provision.ErrTenantNotFound) {
			t.Errorf("cleanup: Delete(%s): %v", tenant, err)
		}
	})
	return tenant
}

func (b *Backend) create(t *testing.T, tenant string) (provision.Endpoint, error) {
	ctx, cancel := context.WithTimeout(t.Context(), b.timeout())
	defer cancel()
	return b.Provider.Create(ctx, tenant)
}

func (b *Backend) mustCount(t *testing.T, tenant string, want int) {
	t.Helper()
	n, err := b.Count(t.Context(), tenant)
	if err != nil {
		t.Fatalf("Count(%s): %v", tenant, err)
	}
	if n != want {
		t.Errorf("the backend holds %d databases for tenant %s, want %d", n, tenant, want)
	}
}

// same reports how a and b differ in what must not change between two
// Creates of one tenant (the password may: local resets it each time).
func same(a, b provision.Endpoint) string {
	var diffs []string
	if a.Host != b.Host || a.Port != b.Port {
		diffs = append(diffs, fmt.Sprintf("address %s vs %s", a.Addr(), b.Addr()))
	}
	if a.Database != b.Database {
		diffs = append(diffs, fmt.Sprintf("database %q vs %q", a.Database, b.Database))
	}
	if a.User != b.User {
		diffs = append(diffs, fmt.Sprintf("user %q vs %q", a.User, b.User))
	}
	if a.ProviderID != b.ProviderID {
		diffs = append(diffs, fmt.Sprintf("provider ID %q vs %q", a.ProviderID, b.ProviderID))
	}
	return strings.Join(diffs, ", ")
}

func createIsIdempotent(t *testing.T, b *Backend) {
	tenant := b.newTenant(t)
	if b.Finds {
		b.mustCount(t, tenant, 1)
	} else {
		b.mustCount(t, tenant, 0)
	}
	first, err := b.create(t, tenant)
	if err != nil {
		t.Fatalf("first Create: %v", err)
	}
	if first.Host == "" || first.Port == 0 || first.Database == "" || first.User == "" {
		t.Fatalf("first Create returned an incomplete endpoint %v", first)
	}
	second, err := b.create(t, tenant)
	if err != nil {
		t.Fatalf("second Create: %v", err)
	}
	if d := same(first, second); d != "" {
		t.Errorf("the second Create returned another endpoint: %s", d)
	}
	b.mustCount(t, tenant, 1)
}

func concurrentCreates(t *testing.T, b *Backend) {
	tenant := b.newTenant(t)
	eps := make([]provision.Endpoint, Concurrency)
	errs := make([]error, Concurrency)
	var wg sync.WaitGroup
	for i := range Concurrency {
		wg.Go(func() { eps[i], errs[i] = b.create(t, tenant) })
	}
	wg.Wait()
	var ok *provision.Endpoint
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed == 1 {
				t.Errorf("Create %d of %d: %v", i, Concurrency, err)
			}
			continue
		}
		if ok == nil {
			ok = &eps[i]
		} else if d := same(*ok, eps[i]); d != "" {
			t.Errorf("concurrent Creates returned different endpoints: %s", d)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent Creates failed", failed, Concurrency)
	}
	b.mustCount(t, tenant, 1)
}

func lostCreateResponse(t *testing.T, b *Backend) {
	if b.LoseCreateResponse == nil {
		t.Skip("providertest: no lost responses for this backend: " + b.SkipLost)
	}
	tenant := b.newTenant(t)
	b.LoseCreateResponse(tenant)
	// The provider may retry within this Create and find the database by
	// name, or fail; either way the next Create must adopt it.
	if _, err := b.create(t, tenant); err != nil {
		t.Logf("Create whose answer was lost: %v", err)
	}
	if _, err := b.create(t, tenant); err != nil {
		t.Fatalf("Create after a lost answer: %v", err)
	}
	b.mustCount(t, tenant, 1)
}

func deleteTwice(t *testing.T, b *Backend) {
	tenant := b.newTenant(t)
	if _, err := b.create(t, tenant); err != nil {
		t.Fatalf("Create: %v", err)
	}
	b.mustCount(t, tenant, 1)
	ctx, cancel := context.WithTimeout(t.Context(), b.timeout())
	defer cancel()
	if err := b.Provider.Delete(ctx, tenant); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	b.mustCount(t, tenant, 0)
	if err := b.Provider.Delete(ctx, tenant); err != nil && !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("second Delete = %v, want nil or ErrTenantNotFound", err)
	}
	b.mustCount(t, tenant, 0)
}

// secret is the app secret clients of the suite's router log in with.
const secret = "conformance-secret"

func endToEnd(t *testing.T, b *Backend) {
	addr := b.startRouter(t)
	tenants := []string{b.newTenant(t), b.newTenant(t)}
	conns := make([]*pgx.Conn, len(tenants))
	for i, tenant := range tenants {
		conns[i] = b.connect(t, addr, tenant)
	}
	ctx := t.Context()
	for i, c := range conns {
		table := "conformance_" + tenants[i]
		if _, err := c.Exec(ctx, "CREATE TABLE "+pgx.Identifier{table}.Sanitize()+" (v text)"); err != nil {
			t.Fatalf("tenant %s: CREATE TABLE: %v", tenants[i], err)
		}
		if _, err := c.Exec(ctx, "INSERT INTO "+pgx.Identifier{table}.Sanitize()+" VALUES ($1)", tenants[i]); err != nil {
			t.Fatalf("tenant %s: INSERT: %v", tenants[i], err)
		}
	}
	for i, c := range conns {
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM "+pgx.Identifier{"conformance_" + tenants[i]}.Sanitize()).Scan(&v); err != nil || v != tenants[i] {
			t.Errorf("tenant %s reads its own table: %q, %v", tenants[i], v, err)
		}
		other := tenants[1-i]
		var seen *string
		if err := c.QueryRow(ctx, "SELECT to_regclass($1)::text", "conformance_"+other).Scan(&seen); err != nil {
			t.Fatalf("tenant %s: to_regclass: %v", tenants[i], err)
		}
		if seen != nil {
			t.Errorf("tenant %s sees tenant %s's table %s", tenants[i], other, *seen)
		}
	}
}

// startRouter starts a router on the backend, with its catalog in a new
// database of the shared throwaway Postgres, and returns its address.
func (b *Backend) startRouter(t *testing.T) string {
	t.Helper()
	c := pgtest.Shared(t)
	catDB := pgtest.CreateDB(t, c)
	cfg := router.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = secret
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Catalog.DSN = c.AdminDSN(catDB)
	// The Upstream below replaces the provider the file would name;
	// validation still wants the default provider's settings.
	cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
	cfg.DrainTimeout = 0
	cfg.ConnectTimeout = b.timeout()
	cfg.Cache.FillTimeout = b.timeout()
	cfg.Limits.MaxHandshakes = 0
	cfg.Limits.AuthBackoff.Threshold = 0
	up := b.Upstream
	up.Provider = b.Provider
	up.CatalogDSN = c.AdminDSN(catDB)
	if up.Close == nil {
		up.Close = func() {}
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("PROVIDERTEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	rt, err := router.New(t.Context(), cfg, router.Options{Log: log, Upstream: &up})
	if err != nil {
		t.Fatalf("router.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	return rt.Addr().String()
}

// connect logs in to tenant through the router at addr, polling while
// the router says the tenant is being created (57P03), up to the
// backend's timeout.
func (b *Backend) connect(t *testing.T, addr, tenant string) *pgx.Conn {
	t.Helper()
	dsn := fmt.Sprintf("postgres://%s:%s@%s/app?sslmode=disable&connect_timeout=%d",
		tenant, secret, addr, int(b.timeout().Seconds())+1)
	var conn *pgx.Conn
	var last error
	poll.Until(t, b.timeout(), "tenant "+tenant+" to answer through the router", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), b.timeout())
		defer cancel()
		conn, last = pgx.Connect(ctx, dsn)
		var pe *pgconn.PgError
		if last != nil && !(errors.As(last, &pe) && pe.Code == "57P03") {
			t.Fatalf("tenant %s: connect through the router: %v", tenant, last)
		}
		return last == nil
	})
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}
