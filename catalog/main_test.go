package catalog_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestMain runs the tests on one shared Postgres cluster (see pgtest).
func TestMain(m *testing.M) { pgtest.Main(m) }

// checkGoroutines fails t if it leaves goroutines behind. Call it first.
func checkGoroutines(t *testing.T) {
	t.Helper()
	pgtest.CheckGoroutines(t)
}

// newDB creates an empty database on the shared cluster, dropped when t
// ends, and returns its DSN.
func newDB(t *testing.T) string {
	t.Helper()
	c := pgtest.Shared(t)
	return c.AdminDSN(pgtest.CreateDB(t, c))
}

// newPool opens a pool on dsn, closed when t ends.
func newPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
