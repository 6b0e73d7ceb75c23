package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// credentialsDDL creates the tenants' own secrets (auth.per_tenant): one
// SCRAM-SHA-256 verifier per tenant, in pg_authid's format. The password
// itself is never stored; like pg_authid, the table must not be readable
// by anyone who should not try to guess passwords offline. Shared by every
// router instance, like pgtenant.blocked.
const credentialsDDL = `CREATE TABLE IF NOT EXISTS pgtenant.credentials (
	tenant     text PRIMARY KEY,
	verifier   text NOT NULL CHECK (verifier LIKE 'SCRAM-SHA-256$%'),
	updated_at timestamptz NOT NULL DEFAULT now()
)`

// migrateCredentials creates pgtenant.credentials in tx if it is missing,
// as migrateBlocked does pgtenant.blocked.
func migrateCredentials(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.credentials') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, credentialsDDL); err != nil {
		return fmt.Errorf("create pgtenant.credentials: %w", err)
	}
	return nil
}

// SetCredential records tenant's own secret as verifier (a SCRAM-SHA-256
// verifier; the caller checks it), replacing any earlier one. Like Block
// it does not check that the tenant exists. Errors never contain the
// verifier. Safe for concurrent use.
func (c *Catalog) SetCredential(ctx context.Context, tenant, verifier string) error {
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.credentials (tenant, verifier) VALUES ($1, $2)
		ON CONFLICT (tenant) DO UPDATE SET verifier = EXCLUDED.verifier, updated_at = now()`, tenant, verifier); err != nil {
		return fmt.Errorf("catalog set credential %q: %w", tenant, err)
	}
	return nil
}

// DeleteCredential removes tenant's own secret; deleted reports whether it
// had one. Safe for concurrent use.
func (c *Catalog) DeleteCredential(ctx context.Context, tenant string) (deleted bool, err error) {
	tag, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.credentials WHERE tenant = $1`, tenant)
	if err != nil {
		return false, fmt.Errorf("catalog delete credential %q: %w", tenant, err)
	}
	return tag.RowsAffected() > 0, nil
}

// Credentials returns every tenant's own secret, tenant to verifier (empty,
// not nil, when there is none). Safe for concurrent use.
func (c *Catalog) Credentials(ctx context.Context) (map[string]string, error) {
	rows, err := c.pool.Query(ctx, `SELECT tenant, verifier FROM pgtenant.credentials`)
	if err != nil {
		return nil, fmt.Errorf("catalog credentials: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var tenant, verifier string
		if err := rows.Scan(&tenant, &verifier); err != nil {
			return nil, fmt.Errorf("catalog credentials: %w", err)
		}
		out[tenant] = verifier
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog credentials: %w", err)
	}
	return out, nil
}
