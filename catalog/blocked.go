package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// blockedDDL creates the block list: tenants an operator has blocked. It is
// shared by every router instance, like pgtenant.tenants; each instance
// applies it to its proxy (and refreshes it periodically).
const blockedDDL = `CREATE TABLE IF NOT EXISTS pgtenant.blocked (
	tenant     text PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// migrateBlocked creates pgtenant.blocked in tx if it is missing (catalogs
// created before the block list existed get it on the next Open).
// Like the other tables it is created under the schema lock, so instances
// starting together do not race; once it exists no DDL privilege is needed.
func migrateBlocked(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.blocked') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, blockedDDL); err != nil {
		return fmt.Errorf("create pgtenant.blocked: %w", err)
	}
	return nil
}

// Block adds tenant to the block list shared by all router instances. It
// is idempotent: blocking a blocked tenant changes nothing. It does not
// check that the tenant exists (a tenant may be blocked before it is
// created). Safe for concurrent use.
func (c *Catalog) Block(ctx context.Context, tenant string) error {
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.blocked (tenant) VALUES ($1)
		ON CONFLICT (tenant) DO NOTHING`, tenant); err != nil {
		return fmt.Errorf("catalog block %q: %w", tenant, err)
	}
	return nil
}

// Unblock removes tenant from the block list. It is idempotent. Safe for
// concurrent use.
func (c *Catalog) Unblock(ctx context.Context, tenant string) error {
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.blocked WHERE tenant = $1`, tenant); err != nil {
		return fmt.Errorf("catalog unblock %q: %w", tenant, err)
	}
	return nil
}

// BlockedList returns the blocked tenants in ID order (empty, not nil, when
// none is). Safe for concurrent use.
func (c *Catalog) BlockedList(ctx context.Context) ([]string, error) {
	rows, err := c.pool.Query(ctx, `SELECT tenant FROM pgtenant.blocked ORDER BY tenant`)
	if err != nil {
		return nil, fmt.Errorf("catalog blocked list: %w", err)
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("catalog blocked list: %w", err)
	}
	if list == nil {
		list = []string{}
	}
	return list, nil
}
