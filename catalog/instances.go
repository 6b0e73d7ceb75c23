package catalog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// instancesDDL creates the instance registry: the router instances sharing
// this catalog, each with the address its peers reach it on (to forward
// cancel requests) and a heartbeat. A row is live until expires_at, which
// its instance pushes forward with every heartbeat; an instance that stops
// (killed, cut off from the catalog) expires and its ID becomes free. token
// tells the process that holds the row from a later one with the same ID.
const instancesDDL = `CREATE TABLE IF NOT EXISTS pgtenant.instances (
	instance_id  smallint PRIMARY KEY CHECK (instance_id BETWEEN 0 AND 255),
	peer_addr    text NOT NULL,
	token        text NOT NULL,
	started_at   timestamptz NOT NULL,
	heartbeat_at timestamptz NOT NULL,
	expires_at   timestamptz NOT NULL
)`

// migrateInstances creates pgtenant.instances in tx if it is missing, as
// migrateBlocked does pgtenant.blocked.
func migrateInstances(ctx context.Context, tx pgx.Tx) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('pgtenant.instances') IS NOT NULL`).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, instancesDDL); err != nil {
		return fmt.Errorf("create pgtenant.instances: %w", err)
	}
	return nil
}

// Instance is one router instance in the registry.
type Instance struct {
	ID        uint8
	PeerAddr  string    // where its peers reach it (cluster.advertise)
	StartedAt time.Time // when it registered
	Heartbeat time.Time // its last heartbeat
	ExpiresAt time.Time // when it stops counting as live unless it heartbeats again
}

// DuplicateInstanceError is Register's refusal: another live instance holds
// the ID. Now is the catalog's clock when it was found, so that the
// message's "ago" and "in" do not depend on this host's clock.
type DuplicateInstanceError struct {
	Other Instance
	Now   time.Time
}

func (e *DuplicateInstanceError) Error() string {
	o := e.Other
	return fmt.Sprintf("instance_id %d is already registered by a live router instance at %s "+
		"(started %s, last heartbeat %s ago; its entry expires in %s unless it heartbeats again)",
		o.ID, o.PeerAddr, o.StartedAt.UTC().Format(time.RFC3339),
		e.Now.Sub(o.Heartbeat).Round(time.Millisecond), o.ExpiresAt.Sub(e.Now).Round(time.Millisecond))
}

// Registration is this process's entry in the registry, from Register to
// Deregister. Its methods are safe for concurrent use.
type Registration struct {
	c        *Catalog
	id       uint8
	peerAddr string
	token    string
	expire   time.Duration
}

// Register enters instance id, reachable at peerAddr, in the registry, live
// for expire unless Heartbeat renews it. If another live instance holds id,
// it fails with a *DuplicateInstanceError. An expired entry for id (an
// instance that was killed, or lost the catalog for longer than its
// expiry) is taken over. The check and the write run in one transaction
// under an advisory lock per ID, so of several instances starting with the
// same ID at once exactly one wins. Rows are compared with the catalog's
// clock, never this host's.
func (c *Catalog) Register(ctx context.Context, id uint8, peerAddr string, expire time.Duration) (*Registration, error) {
	if expire <= 0 {
		return nil, fmt.Errorf("catalog register instance %d: expiry %s is not positive", id, expire)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:]) // never fails
	r := &Registration{c: c, id: id, peerAddr: peerAddr, token: hex.EncodeToString(tok[:]), expire: expire}
	if err := r.register(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// register writes r's row unless another live instance holds the ID.
func (r *Registration) register(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, r.c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`,
			fmt.Sprintf("pgtenant/instance:%d", r.id)); err != nil {
			return err
		}
		// Read committed: this sees what a rival committed while we waited.
		var o Instance
		var token string
		var now time.Time
		err := tx.QueryRow(ctx, `SELECT peer_addr, token, started_at, heartbeat_at, expires_at, now()
			FROM pgtenant.instances WHERE instance_id = $1 AND expires_at > now()`, int16(r.id)).
			Scan(&o.PeerAddr, &token, &o.StartedAt, &o.Heartbeat, &o.ExpiresAt, &now)
		switch {
		case err == nil && token != r.token:
			o.ID = r.id
			return &DuplicateInstanceError{Other: o, Now: now}
		case err != nil && !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO pgtenant.instances
				(instance_id, peer_addr, token, started_at, heartbeat_at, expires_at)
			VALUES ($1, $2, $3, now(), now(), now() + make_interval(secs => $4))
			ON CONFLICT (instance_id) DO UPDATE SET
				peer_addr = excluded.peer_addr, token = excluded.token, started_at = excluded.started_at,
				heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at`,
			int16(r.id), r.peerAddr, r.token, r.expire.Seconds())
		return err
	})
	if err != nil {
		return fmt.Errorf("catalog register instance %d: %w", r.id, err)
	}
	return nil
}

// ID is the registered instance ID.
func (r *Registration) ID() uint8 { return r.id }

// Heartbeat keeps the entry live for another expiry. If the entry is gone
// (it expired and another instance took the ID over, or an operator deleted
// it), it registers again, as Register would, and reports reregistered;
// that fails with a *DuplicateInstanceError while another live instance
// holds the ID.
func (r *Registration) Heartbeat(ctx context.Context) (reregistered bool, err error) {
	tag, err := r.c.pool.Exec(ctx, `UPDATE pgtenant.instances
		SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
		WHERE instance_id = $1 AND token = $2 AND expires_at > now()`,
		int16(r.id), r.token, r.expire.Seconds())
	if err != nil {
		return false, fmt.Errorf("catalog heartbeat of instance %d: %w", r.id, err)
	}
	if tag.RowsAffected() == 1 {
		return false, nil
	}
	return true, r.register(ctx)
}

// Deregister removes the entry (only if it is still this registration's),
// so that the ID is free at once rather than after the expiry.
func (r *Registration) Deregister(ctx context.Context) error {
	if _, err := r.c.pool.Exec(ctx, `DELETE FROM pgtenant.instances WHERE instance_id = $1 AND token = $2`,
		int16(r.id), r.token); err != nil {
		return fmt.Errorf("catalog deregister instance %d: %w", r.id, err)
	}
	return nil
}

// Instances returns the live instances in ID order (empty, not nil, when
// none is). Expired entries are left out. Safe for concurrent use.
func (c *Catalog) Instances(ctx context.Context) ([]Instance, error) {
	rows, err := c.pool.Query(ctx, `SELECT instance_id, peer_addr, started_at, heartbeat_at, expires_at
		FROM pgtenant.instances WHERE expires_at > now() ORDER BY instance_id`)
	if err != nil {
		return nil, fmt.Errorf("catalog instances: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Instance, error) {
		var in Instance
		var id int16
		err := row.Scan(&id, &in.PeerAddr, &in.StartedAt, &in.Heartbeat, &in.ExpiresAt)
		in.ID = uint8(id)
		return in, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog instances: %w", err)
	}
	if list == nil {
		list = []Instance{}
	}
	return list, nil
}
