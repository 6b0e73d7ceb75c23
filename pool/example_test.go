package pool_test

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/pool"
)

// Example shows a session-mode client: acquire a server connection for the
// route, relay, and hand the connection back reset. (Compiled, not run: it
// needs a server.)
func Example() {
	m := pool.New(pool.Config{MaxServerConnections: 80, MinPerTenant: 2, MaxPerTenant: 20})
	defer m.Close()

	ctx := context.Background()
	key := pool.Key{Tenant: "acme", Server: "127.0.0.1:5432", Database: "acme", User: "acme"}
	dial := func(ctx context.Context) (pool.Server, error) { // the proxy's login goes here
		pc, err := pgconn.Connect(ctx, "postgres://acme@127.0.0.1:5432/acme")
		if err != nil {
			return pool.Server{}, err
		}
		hj, err := pc.Hijack()
		if err != nil {
			return pool.Server{}, err
		}
		return pool.FromHijacked(hj), nil
	}

	c, err := m.Acquire(ctx, key, dial)
	var full *pool.BudgetError
	if errors.As(err, &full) {
		_ = full.Error() // sent to the client as 53300
		return
	}
	if err != nil {
		return
	}

	// Relay server → client through a Tracker (client → server through a
	// Requests, for transaction mode).
	var tr pool.Tracker
	buf := make([]byte, 16<<10)
	for !tr.Idle() {
		n, err := c.Conn.Read(buf)
		tr.Feed(buf[:n]) // and write buf[:n] to the client
		if err != nil || tr.Err() != nil {
			c.Release(false) // broken: closed, never handed on
			return
		}
	}
	// The client left: roll back if it was in a transaction, DISCARD ALL,
	// and keep the connection for the next client.
	_ = c.ResetRelease(ctx, tr.TxStatus(), pool.DefaultResetQuery)
}
