package local_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/providertest"
)

// TestConformance runs the providers' conformance suite against the local
// provider on the shared throwaway Postgres.
func TestConformance(t *testing.T) {
	e := newEnv(t, nil)
	c := &cutter{}
	// The suite's provider: e's, on an admin pool that can lose answers.
	p := local.New(e.cfg, adminPool(t, e.c, c, "", ""))
	providertest.Run(t, providertest.Backend{
		Provider: p,
		Count: func(ctx context.Context, tenant string) (int, error) {
			var n int
			err := e.admin.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, e.cfg.Prefix+tenant).Scan(&n)
			return n, err
		},
		LoseCreateResponse: func(tenant string) { c.arm(e.cfg.Prefix + tenant) },
	})
}

// cutter loses the answer to a CREATE DATABASE: once armed for a database
// name, it breaks the admin connection as soon as that statement has
// succeeded, so the database exists and the provider hears only a broken
// connection on its next step.
type cutter struct {
	mu   sync.Mutex
	name string
}

func (c *cutter) arm(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.name = name
}

type cutKey struct{}

func (c *cutter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.name != "" && strings.HasPrefix(d.SQL, "CREATE DATABASE "+pgx.Identifier{c.name}.Sanitize()+" ") {
		c.name = ""
		return context.WithValue(ctx, cutKey{}, true)
	}
	return ctx
}

func (c *cutter) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryEndData) {
	if ctx.Value(cutKey{}) != nil && d.Err == nil {
		_ = conn.PgConn().Conn().Close()
	}
}
