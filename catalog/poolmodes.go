package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Per-tenant pool modes, as pgtenant.pool_modes stores them.
const (
	PoolModeSession     = "session"
	PoolModeTransaction = "transaction"
	PoolModeOff         = "off"
)

// poolModesDDL creates the per-tenant pool modes: a tenant listed here is
// pooled as its row says rather than as the router's pool.mode. Shared by
// every router instance, like pgtenant.blocked.
const poolModesDDL = `CREATE TABLE IF NOT EXISTS pgtenant.pool_modes (
	tenant     text PRIMARY KEY,
	mode       text NOT NULL CHECK (mode IN ('session', 'transaction', 'off')),
	updated_at timestamptz NOT NULL DEFAULT now()
)`

// migratePoolModes creates pgtenant.pool_modes in tx if it is missing, as
// migrateBlocked does pgtenant.blocked.
func migratePoolModes(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.pool_modes') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, poolModesDDL); err != nil {
		return fmt.Errorf("create pgtenant.pool_modes: %w", err)
	}
	return nil
}

// ValidPoolMode reports whether mode is one SetPoolMode accepts.
func ValidPoolMode(mode string) bool {
	switch mode {
	case PoolModeSession, PoolModeTransaction, PoolModeOff:
		return true
	}
	return false
}

// SetPoolMode records tenant's pool mode (PoolModeSession,
// PoolModeTransaction or PoolModeOff), replacing any earlier one. Like
// Block it does not check that the tenant exists. Safe for concurrent use.
func (c *Catalog) SetPoolMode(ctx context.Context, tenant, mode string) error {
	if !ValidPoolMode(mode) {
		return fmt.Errorf("catalog set pool mode %q: mode %q is not session, transaction or off", tenant, mode)
	}
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.pool_modes (tenant, mode) VALUES ($1, $2)
		ON CONFLICT (tenant) DO UPDATE SET mode = EXCLUDED.mode, updated_at = now()`, tenant, mode); err != nil {
		return fmt.Errorf("catalog set pool mode %q: %w", tenant, err)
	}
	return nil
}

// ClearPoolMode removes tenant's pool mode, so that the router's default
// applies to it again. It is idempotent. Safe for concurrent use.
func (c *Catalog) ClearPoolMode(ctx context.Context, tenant string) error {
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.pool_modes WHERE tenant = $1`, tenant); err != nil {
		return fmt.Errorf("catalog clear pool mode %q: %w", tenant, err)
	}
	return nil
}

// PoolModes returns every tenant's recorded pool mode (empty, not nil, when
// none is). Safe for concurrent use.
func (c *Catalog) PoolModes(ctx context.Context) (map[string]string, error) {
	rows, err := c.pool.Query(ctx, `SELECT tenant, mode FROM pgtenant.pool_modes`)
	if err != nil {
		return nil, fmt.Errorf("catalog pool modes: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var tenant, mode string
		if err := rows.Scan(&tenant, &mode); err != nil {
			return nil, fmt.Errorf("catalog pool modes: %w", err)
		}
		out[tenant] = mode
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog pool modes: %w", err)
	}
	return out, nil
}
