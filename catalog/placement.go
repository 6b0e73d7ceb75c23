package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/provision"
)

// ErrOtherProvider means the tenant already lives on another provider
// than the one a placement or a route names: moving a tenant's data is
// not something the catalog can do.
var ErrOtherProvider = errors.New("catalog: tenant exists on another provider")

// placementsDDL creates the per-tenant placements: the provider a tenant
// not created yet is to be created with (instead of the router's default
// provider). Shared by every router instance, like pgtenant.pool_modes.
const placementsDDL = `CREATE TABLE IF NOT EXISTS pgtenant.placements (
	tenant     text PRIMARY KEY,
	provider   text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
)`

// tlsColumnDDL adds a route's own upstream TLS mode to pgtenant.tenants
// (a static route's sslmode; ” means its provider's).
const tlsColumnDDL = `ALTER TABLE pgtenant.tenants ADD COLUMN IF NOT EXISTS tls text NOT NULL DEFAULT ''`

// migratePlacements creates pgtenant.placements and the tls column in tx
// if they are missing, as migrateBlocked does pgtenant.blocked.
func migratePlacements(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.placements') IS NOT NULL
		AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pgtenant.tenants'::regclass
			AND attname = 'tls' AND NOT attisdropped)`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	for _, q := range []string{placementsDDL, tlsColumnDDL} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("create pgtenant.placements: %w", err)
		}
	}
	return nil
}

// liveProvider returns the provider of tenant's live (not deleted) row,
// "" when there is none.
func liveProvider(ctx context.Context, q querier, tenant string) (string, error) {
	var p string
	err := q.QueryRow(ctx, `SELECT provider FROM pgtenant.tenants WHERE tenant = $1 AND state <> 'deleted'`, tenant).Scan(&p)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return p, err
}

// Place records that tenant is to be created with provider. It is refused
// with an error wrapping ErrOtherProvider once the tenant exists on another
// provider (placing it where it already is changes nothing). It does not
// check that provider is configured: the caller does. Safe for concurrent
// use; serialised with the tenant's creation by its lock.
func (c *Catalog) Place(ctx context.Context, tenant, provider string) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		cur, err := liveProvider(ctx, tx, tenant)
		if err != nil {
			return err
		}
		if cur != "" && cur != provider {
			return fmt.Errorf("%w: tenant %q exists on provider %s; delete it there first to place it on %s", ErrOtherProvider, tenant, cur, provider)
		}
		_, err = tx.Exec(ctx, `INSERT INTO pgtenant.placements (tenant, provider) VALUES ($1, $2)
			ON CONFLICT (tenant) DO UPDATE SET provider = excluded.provider, updated_at = now()`, tenant, provider)
		return err
	})
	if err != nil && !errors.Is(err, ErrOtherProvider) {
		err = fmt.Errorf("catalog place %q: %w", tenant, err)
	}
	return err
}

// placedProvider returns the provider tenant is placed on, "" when it has
// no placement.
func placedProvider(ctx context.Context, q querier, tenant string) (string, error) {
	var p string
	err := q.QueryRow(ctx, `SELECT provider FROM pgtenant.placements WHERE tenant = $1`, tenant).Scan(&p)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return p, err
}

// Placement returns the provider tenant is placed on; ok is false when it
// has no placement (the router's default provider creates it). Safe for
// concurrent use.
func (c *Catalog) Placement(ctx context.Context, tenant string) (provider string, ok bool, err error) {
	if provider, err = placedProvider(ctx, c.pool, tenant); err != nil {
		return "", false, fmt.Errorf("catalog placement %q: %w", tenant, err)
	}
	return provider, provider != "", nil
}

// Unplace removes tenant's placement and reports whether it had one. A
// tenant already created stays where it is. Safe for concurrent use.
func (c *Catalog) Unplace(ctx context.Context, tenant string) (bool, error) {
	tag, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.placements WHERE tenant = $1`, tenant)
	if err != nil {
		return false, fmt.Errorf("catalog unplace %q: %w", tenant, err)
	}
	return tag.RowsAffected() > 0, nil
}

// SetRoute records ep as tenant's route on provider (a route registered by
// an operator for a database that already exists: the static provider's),
// replacing an earlier route on the same provider. It is refused with an
// error wrapping ErrOtherProvider when the tenant exists on another
// provider or is placed on one. The password is stored encrypted, like
// every other. Safe for concurrent use.
func (c *Catalog) SetRoute(ctx context.Context, tenant, provider string, ep provision.Endpoint) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		cur, err := liveProvider(ctx, tx, tenant)
		if err != nil {
			return err
		}
		if cur != "" && cur != provider {
			return fmt.Errorf("%w: tenant %q exists on provider %s; delete it there first", ErrOtherProvider, tenant, cur)
		}
		placed, err := placedProvider(ctx, tx, tenant)
		if err != nil {
			return err
		}
		if placed != "" && placed != provider {
			return fmt.Errorf("%w: tenant %q is placed on provider %s; remove the placement first", ErrOtherProvider, tenant, placed)
		}
		_, err = tx.Exec(ctx, `INSERT INTO pgtenant.tenants
				(tenant, provider, provider_id, host, port, database, username, password_enc, tls, state)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'ready')
			ON CONFLICT (tenant) DO UPDATE SET
				provider = excluded.provider, provider_id = excluded.provider_id,
				host = excluded.host, port = excluded.port, database = excluded.database,
				username = excluded.username, password_enc = excluded.password_enc, tls = excluded.tls,
				state = 'ready', updated_at = now()`,
			tenant, provider, ep.ProviderID, ep.Host, int32(ep.Port), ep.Database, ep.User,
			c.seal(tenant, ep.Password), ep.TLS)
		return err
	})
	if err != nil && !errors.Is(err, ErrOtherProvider) {
		err = fmt.Errorf("catalog set route %q: %w", tenant, err)
	}
	return err
}

// RouteOn returns tenant's ready route if it lives on provider under
// providerID; ok is false otherwise. Safe for concurrent use.
func (c *Catalog) RouteOn(ctx context.Context, tenant, provider, providerID string) (provision.Endpoint, bool, error) {
	ep, ok, err := c.Lookup(ctx, tenant)
	if err != nil || !ok || ep.Provider != provider || ep.ProviderID != providerID {
		return provision.Endpoint{}, false, err
	}
	return ep, true, nil
}

// DeleteRouteOn marks tenant's route deleted if it lives on provider
// under providerID, as Delete does; otherwise it returns an error wrapping
// provision.ErrTenantNotFound. Safe for concurrent use.
func (c *Catalog) DeleteRouteOn(ctx context.Context, tenant, provider, providerID string) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.tenants
			SET state = 'deleted', password_enc = NULL, updated_at = now()
			WHERE tenant = $1 AND provider = $2 AND provider_id = $3 AND state <> 'deleted'`, tenant, provider, providerID)
		if err == nil && tag.RowsAffected() == 0 {
			return provision.ErrTenantNotFound
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM pgtenant.credentials WHERE tenant = $1`, tenant) // as Delete
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog delete route %q on %s: %w", tenant, provider, err)
	}
	return nil
}

// CountOn returns how many live (not deleted) rows tenant has on provider
// (0 or 1): for tests and the conformance suite.
func (c *Catalog) CountOn(ctx context.Context, tenant, provider string) (int, error) {
	var n int
	err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pgtenant.tenants
		WHERE tenant = $1 AND provider = $2 AND state <> 'deleted'`, tenant, provider).Scan(&n)
	return n, err
}

// PlacedError is Ensure's answer when the tenant was placed on another
// provider than the one Ensure was asked to create it with (a placement
// made while the caller decided): create it with Provider instead.
type PlacedError struct {
	Tenant, Provider string
}

func (e *PlacedError) Error() string {
	return fmt.Sprintf("catalog: tenant %q is placed on provider %s", e.Tenant, e.Provider)
}

// PlacedProvider is the provider the tenant is placed on.
func (e *PlacedError) PlacedProvider() string { return e.Provider }

// checkPlacement returns a *PlacedError when tenant is placed on another
// provider than provider, in tx (under the tenant's lock).
func checkPlacement(ctx context.Context, tx pgx.Tx, tenant, provider string) error {
	placed, err := placedProvider(ctx, tx, tenant)
	switch {
	case err != nil:
		return err
	case placed != "" && placed != provider:
		return &PlacedError{Tenant: tenant, Provider: placed}
	}
	return nil
}
