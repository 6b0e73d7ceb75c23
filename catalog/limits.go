package catalog

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/provision"
)

// createsLock names the advisory lock a creation holds, with limits set,
// from the count of tenants to its commit, so that two instances cannot
// both take the last place. Tenant locks are "pgtenant:<tenant>".
const createsLock = "pgtenant/creates"

// CreateLimits are the cluster-wide limits on creating tenants that Ensure
// applies. The zero value applies none.
type CreateLimits struct {
	// MaxTenants caps the tenants in the catalog (rows not deleted), counted
	// over every instance sharing it. Zero or negative: no cap.
	MaxTenants int
	// CreatesPerMinute caps the tenants created in any rolling minute (by
	// the catalog's created_at, so by the catalog server's clock; deleted
	// tenants created within the minute count too). Zero or negative: no
	// limit.
	CreatesPerMinute int
}

func (l CreateLimits) on() bool { return l.MaxTenants > 0 || l.CreatesPerMinute > 0 }

// SetCreateLimits sets the limits later Ensure calls apply. With either
// limit on, creations are serialised across every instance sharing the
// catalog (one advisory lock from the count to the commit). Safe for
// concurrent use.
func (c *Catalog) SetCreateLimits(l CreateLimits) { c.limits.Store(&l) }

// CreateLimits returns the limits in force.
func (c *Catalog) CreateLimits() CreateLimits {
	if l := c.limits.Load(); l != nil {
		return *l
	}
	return CreateLimits{}
}

// admit checks the limits in tx, which holds the tenant's lock and found
// no row, and keeps the creates lock until tx ends. It returns a
// *provision.LimitError when a limit is reached.
func (c *Catalog) admit(ctx context.Context, tx pgx.Tx) error {
	l := c.CreateLimits()
	if !l.on() {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, createsLock); err != nil {
		return err
	}
	var live, recent int
	var retry float64
	// Background creations still running count as tenants and as
	// creations from their start (creations.go): their rows in
	// pgtenant.tenants appear only when they finish.
	err := tx.QueryRow(ctx, `WITH t AS (
			SELECT state, created_at FROM pgtenant.tenants
			UNION ALL
			SELECT 'running', c.started_at FROM pgtenant.creations c
			WHERE c.state = 'running' AND NOT EXISTS (
				SELECT 1 FROM pgtenant.tenants t WHERE t.tenant = c.tenant AND t.state <> 'deleted'))
		SELECT
			count(*) FILTER (WHERE state <> 'deleted'),
			count(*) FILTER (WHERE created_at > clock_timestamp() - interval '1 minute'),
			coalesce(extract(epoch FROM min(created_at) FILTER (WHERE created_at > clock_timestamp() - interval '1 minute')
				+ interval '1 minute' - clock_timestamp()), 0)
		FROM t`).Scan(&live, &recent, &retry)
	if err != nil {
		return err
	}
	if l.MaxTenants > 0 && live >= l.MaxTenants {
		return &provision.LimitError{Setting: provision.LimitMaxTenants, Max: l.MaxTenants}
	}
	if l.CreatesPerMinute > 0 && recent >= l.CreatesPerMinute {
		return &provision.LimitError{Setting: provision.LimitCreatesPerMinute, Max: l.CreatesPerMinute,
			RetryAfter: time.Duration(retry * float64(time.Second))}
	}
	return nil
}
