package local

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// TemplateName returns the template database's name (Config.Template or
// its default).
func (p *Provider) TemplateName() string { return p.cfg.template() }

// ConnectTemplate opens a session in the template database for schema
// migrations, as the role that owns the template's objects
// (Template+"_owner", through SET ROLE on an admin login), so that what
// the migrations create is handed to each tenant created later, as
// EnsureTemplate's setup SQL is. If schema public belongs to the
// database's owner (the admin, who cannot hand it over), it is given to
// the owner role first, so that the migrations may create objects in it;
// each new tenant's role then owns public outright, which allows what
// owning the database did. A template made by hand, without the owner role,
// gets an admin session.
//
// The caller closes the session as soon as it is done: CREATE DATABASE
// cannot clone the template while anyone is connected to it (Create
// retries for up to 30s), and a clone in progress makes this connect wait.
func (p *Provider) ConnectTemplate(ctx context.Context) (*pgx.Conn, error) {
	if err := p.cfg.Validate(); err != nil {
		return nil, err
	}
	cfg := p.admin.Config().ConnConfig.Copy()
	cfg.Database = p.cfg.template()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("local: connect to template %q: %w", cfg.Database, err)
	}
	owner := p.cfg.owner()
	var hasOwner bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", owner).Scan(&hasOwner)
	if err == nil && hasOwner {
		var publicOwner string
		err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace
			WHERE nspname = 'public'`).Scan(&publicOwner)
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
		if err == nil && publicOwner == "pg_database_owner" { // PostgreSQL 15+
			_, err = conn.Exec(ctx, "ALTER SCHEMA public OWNER TO "+ident(owner))
		}
		if err == nil {
			_, err = conn.Exec(ctx, "SET ROLE "+ident(owner))
		}
	}
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("local: template %q session as %q: %w", cfg.Database, owner, err)
	}
	return conn, nil
}
