package local_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision/local"
)

// spareOIDs returns the OIDs of the ready spares made from e's template.
func spareOIDs(t *testing.T, e *env) map[uint32]bool {
	t.Helper()
	rows, err := e.admin.Query(t.Context(), `SELECT oid FROM pg_database
		WHERE datname LIKE 'pgtenant_spare_%' AND shobj_description(oid, 'pg_database') LIKE '%template ' || $1`, e.cfg.Template)
	if err != nil {
		t.Fatal(err)
	}
	oids, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[uint32]bool, len(oids))
	for _, o := range oids {
		m[o] = true
	}
	return m
}

// waitSpares polls until e's template has n ready spares.
func waitSpares(t *testing.T, e *env, n int) map[uint32]bool {
	t.Helper()
	var s map[uint32]bool
	poll.Until(t, time.Minute, fmt.Sprintf("%d ready spares", n), func() bool {
		s = spareOIDs(t, e)
		return len(s) == n
	})
	return s
}

func runSpares(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.p.RunSpares(ctx, slog.New(slog.NewTextHandler(t.Output(), nil)))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func dbOID(t *testing.T, e *env, name string) uint32 {
	t.Helper()
	var oid uint32
	if err := e.admin.QueryRow(t.Context(), "SELECT oid FROM pg_database WHERE datname = $1", name).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

func TestSpares(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, func(c *local.Config) { c.Spares = 2 })
	runSpares(t, e)
	spares := waitSpares(t, e, 2)

	ep, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	if !spares[dbOID(t, e, ep.Database)] {
		t.Fatal("Create cloned the template although a spare was ready")
	}
	checkTenant(t, ep)           // its role logs in, owns the schema, has the template's data
	after := waitSpares(t, e, 2) // refilled
	for oid := range after {
		if oid == dbOID(t, e, ep.Database) {
			t.Fatal("the claimed database still counts as a spare")
		}
	}

	// Create again (idempotent): the name is taken, so no spare is used
	// and the tenant is adopted as without spares.
	ep2, err := e.p.Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	checkTenant(t, ep2)
	if got := spareOIDs(t, e); len(got) != 2 {
		t.Fatalf("%d spares after re-creating a tenant, want 2 untouched", len(got))
	}

	// A claimed tenant cannot reach another tenant's database, nor a spare.
	other, err := e.p.Create(t.Context(), "globex")
	if err != nil {
		t.Fatal(err)
	}
	var spareName string
	if err := e.admin.QueryRow(t.Context(), `SELECT datname FROM pg_database WHERE datname LIKE 'pgtenant_spare_%'
		AND shobj_description(oid, 'pg_database') LIKE '%template ' || $1 LIMIT 1`, e.cfg.Template).Scan(&spareName); err != nil {
		t.Fatal(err)
	}
	for _, db := range []string{other.Database, spareName} {
		conn, err := connectAs(t.Context(), ep2, db)
		if err == nil {
			conn.Close(t.Context())
		}
		if sqlstate(err) != "42501" {
			t.Fatalf("tenant acme into %s: %v, want 42501", db, err)
		}
	}
}

func TestSparesConcurrentCreates(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := newEnv(t, func(c *local.Config) { c.Spares = 2 })
	runSpares(t, e)
	waitSpares(t, e, 2)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			ep, err := e.p.Create(t.Context(), fmt.Sprintf("c%d", i))
			if err == nil {
				conn, cerr := connect(t.Context(), ep)
				if cerr == nil {
					conn.Close(t.Context())
				}
				err = cerr
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("tenant c%d: %v", i, err)
		}
	}
	waitSpares(t, e, 2)
}

func TestSparesOff(t *testing.T) {
	e := newEnv(t, nil)
	done := make(chan struct{})
	go func() { e.p.RunSpares(t.Context(), slog.New(slog.DiscardHandler)); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RunSpares with no spares configured did not return")
	}
	if _, err := e.p.Create(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if n := len(spareOIDs(t, e)); n != 0 {
		t.Fatalf("%d spares made with Spares 0", n)
	}
}
