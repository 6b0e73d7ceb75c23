package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/provision"
)

// creationsDDL creates the table of background creations: tenants whose
// provider takes minutes to create them (provision.Estimator). A row is
// the claim of one router instance on the creation; the tenant's row in
// pgtenant.tenants appears, and this one goes, when it finishes. Holding
// the tenant's advisory lock for minutes instead would keep a catalog
// connection busy and other instances' connects waiting on it.
const creationsDDL = `CREATE TABLE IF NOT EXISTS pgtenant.creations (
	tenant       text PRIMARY KEY,
	provider     text NOT NULL,
	state        text NOT NULL CHECK (state IN ('running', 'failed')),
	owner        text NOT NULL,  -- token of the claim; heartbeats and the finish must match it
	lease        interval NOT NULL, -- the owner's: silent this long, the claim may be taken over
	started_at   timestamptz NOT NULL DEFAULT now(),
	heartbeat_at timestamptz NOT NULL DEFAULT now(),
	finished_at  timestamptz,
	error        text NOT NULL DEFAULT ''
)`

// migrateCreations creates pgtenant.creations in tx if it is missing, as
// migrateBlocked does for the block list.
func migrateCreations(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.creations') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, creationsDDL); err != nil {
		return fmt.Errorf("create pgtenant.creations: %w", err)
	}
	return nil
}

// maxErrorLen caps the failure text kept per creation.
const maxErrorLen = 1000

// ClaimCreation claims the background creation of tenant for owner (a
// token unique to the caller's attempt), unless the catalog says it need
// not or must not run. Under the tenant's advisory lock, held only for
// this short transaction, it returns:
//
//   - State CreationReady and the tenant's endpoint: it is in the catalog.
//   - State CreationRunning with another Owner: another instance is
//     creating it and heartbeated within its lease (the one it claimed
//     with: instances configured differently still agree).
//   - State CreationFailed: the last creation failed less than retryAfter
//     ago; clients are told so until then.
//   - State CreationRunning with Owner == owner: the caller has the claim.
//     It runs the provider's Create, calls HeartbeatCreation more often
//     than lease (its own, recorded with the claim), and ends with
//     FinishCreation or FailCreation. A claim
//     taken over from a silent creator keeps its Started.
//
// A new creation (not a takeover) is admitted by the CreateLimits first;
// a refusal is a *provision.LimitError. A tenant placed on another
// provider than provider is a *PlacedError (create it there instead). Safe for concurrent use.
func (c *Catalog) ClaimCreation(ctx context.Context, tenant, provider, owner string, lease, retryAfter time.Duration) (provision.Endpoint, provision.Creation, error) {
	var ep provision.Endpoint
	var cr provision.Creation
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var ok bool
		var err error
		if ep, ok, err = c.lookup(ctx, tx, tenant); err != nil || ok {
			cr = provision.Creation{Tenant: tenant, State: provision.CreationReady}
			return err
		}
		if err := checkPlacement(ctx, tx, tenant, provider); err != nil { // placement.go
			return err
		}
		var stale bool
		cr, stale, err = creation(ctx, tx, tenant, retryAfter)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		case cr.State == provision.CreationRunning && !stale:
			return nil // someone else's, alive
		case cr.State == provision.CreationFailed && !stale:
			return nil // failed a moment ago: say so until retryAfter
		}
		takeover := err == nil && cr.State == provision.CreationRunning
		if !takeover {
			if err := c.admit(ctx, tx); err != nil { // limits.go
				return err
			}
		}
		cr = provision.Creation{Tenant: tenant, Provider: provider, State: provision.CreationRunning, Owner: owner}
		return tx.QueryRow(ctx, `INSERT INTO pgtenant.creations (tenant, provider, state, owner, lease)
			VALUES ($1, $2, 'running', $3, $4)
			ON CONFLICT (tenant) DO UPDATE SET provider = excluded.provider, state = 'running', owner = excluded.owner,
				lease = excluded.lease,
				started_at = CASE WHEN pgtenant.creations.state = 'running' THEN pgtenant.creations.started_at ELSE now() END,
				heartbeat_at = now(), finished_at = NULL, error = ''
			RETURNING started_at, heartbeat_at`, tenant, provider, owner, lease).Scan(&cr.Started, &cr.Heartbeat)
	})
	if err != nil {
		var le *provision.LimitError
		var pe *PlacedError
		if errors.As(err, &le) || errors.As(err, &pe) {
			return provision.Endpoint{}, provision.Creation{}, err
		}
		return provision.Endpoint{}, provision.Creation{}, fmt.Errorf("catalog claim creation of %q: %w", tenant, err)
	}
	return ep, cr, nil
}

// creation reads tenant's creation row. stale reports that a running one
// missed its heartbeat for its lease, or that a failed one failed
// retryAfter ago or earlier (by the catalog server's clock). No row:
// pgx.ErrNoRows.
func creation(ctx context.Context, q querier, tenant string, retryAfter time.Duration) (provision.Creation, bool, error) {
	cr := provision.Creation{Tenant: tenant}
	var finished *time.Time
	var stale bool
	err := q.QueryRow(ctx, `SELECT provider, state, owner, started_at, heartbeat_at, finished_at, error,
			CASE state WHEN 'running' THEN heartbeat_at <= clock_timestamp() - lease
				ELSE finished_at <= clock_timestamp() - $2::interval END
		FROM pgtenant.creations WHERE tenant = $1`, tenant, retryAfter).
		Scan(&cr.Provider, &cr.State, &cr.Owner, &cr.Started, &cr.Heartbeat, &finished, &cr.Error, &stale)
	if finished != nil {
		cr.Finished = *finished
	}
	return cr, stale, err
}

// Creation returns tenant's background creation as the catalog records
// it: running (possibly by a creator gone silent) or failed. ok is false
// when there is none: the tenant is ready, was never created in the
// background, or nobody tried. Safe for concurrent use.
func (c *Catalog) Creation(ctx context.Context, tenant string) (cr provision.Creation, ok bool, err error) {
	cr, _, err = creation(ctx, c.pool, tenant, 0)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return provision.Creation{}, false, nil
	case err != nil:
		return provision.Creation{}, false, fmt.Errorf("catalog creation of %q: %w", tenant, err)
	}
	return cr, true, nil
}

// HeartbeatCreation tells the other instances that owner is still creating
// tenant. It reports false if owner no longer holds the claim (another
// instance took it over after a silence longer than the lease, or it was
// finished): the caller should stop. Safe for concurrent use.
func (c *Catalog) HeartbeatCreation(ctx context.Context, tenant, owner string) (bool, error) {
	tag, err := c.pool.Exec(ctx, `UPDATE pgtenant.creations SET heartbeat_at = now()
		WHERE tenant = $1 AND owner = $2 AND state = 'running'`, tenant, owner)
	if err != nil {
		return false, fmt.Errorf("catalog heartbeat creation of %q: %w", tenant, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ErrClaimLost is returned by FinishCreation and FailCreation when the
// caller's claim was taken over by another instance: that one's result
// counts, not the caller's.
var ErrClaimLost = errors.New("catalog: the creation's claim was taken over by another instance")

// FinishCreation records ep as tenant's route under provider's name and
// ends owner's claim, in one transaction under the tenant's lock: the
// tenant is ready for every instance at once. It fails with ErrClaimLost
// (recording nothing) if owner no longer holds the claim. Safe for
// concurrent use.
func (c *Catalog) FinishCreation(ctx context.Context, tenant, provider, owner string, ep provision.Endpoint) error {
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if err := lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM pgtenant.creations WHERE tenant = $1 AND owner = $2 AND state = 'running'`, tenant, owner)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrClaimLost
		}
		return c.record(ctx, tx, tenant, provider, ep)
	})
	if err != nil && !errors.Is(err, ErrClaimLost) {
		err = fmt.Errorf("catalog finish creation of %q: %w", tenant, err)
	}
	return err
}

// FailCreation records that owner's creation of tenant failed, with why
// (shown to operators; it must hold no secret). It fails with
// ErrClaimLost if owner no longer holds the claim. Safe for concurrent
// use.
func (c *Catalog) FailCreation(ctx context.Context, tenant, owner, why string) error {
	if len(why) > maxErrorLen {
		why = why[:maxErrorLen] + "…"
	}
	tag, err := c.pool.Exec(ctx, `UPDATE pgtenant.creations SET state = 'failed', finished_at = now(), error = $3
		WHERE tenant = $1 AND owner = $2 AND state = 'running'`, tenant, owner, why)
	switch {
	case err != nil:
		return fmt.Errorf("catalog fail creation of %q: %w", tenant, err)
	case tag.RowsAffected() == 0:
		return ErrClaimLost
	}
	return nil
}
