package local

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/provision"
)

// Defaults for the zero Config.
const (
	DefaultTemplate = "pgtenant_template"
	DefaultPrefix   = "t_"
)

// Naming schemes of Config.Naming.
const (
	// NamingPlain names a tenant's database and role Prefix + tenant ID.
	NamingPlain = "plain"
	// NamingHashed names them Prefix + HashLen lower-case base32 characters
	// of HMAC-SHA256(NamingKey, tenant ID): 130 bits, which tell nobody
	// without the key anything about the tenant ID.
	NamingHashed = "hashed"
)

const (
	// HashLen is the length of the hashed part of a NamingHashed name:
	// 26 base32 characters carry 130 bits of the HMAC.
	HashLen = 26
	// MinNamingKey is the shortest Config.NamingKey accepted, in bytes.
	MinNamingKey = 32
)

const (
	// maxIdentLen is the longest identifier Postgres keeps (NAMEDATALEN-1).
	// Longer names are silently truncated by the server, which could map two
	// tenants to one database, so they are rejected instead.
	maxIdentLen = 63
	// buildSuffix names the scratch database EnsureTemplate fills before
	// renaming it to the template, so a half-built template is never visible.
	buildSuffix = "_build"
	// ownerSuffix names the NOLOGIN role that owns the objects setupSQL
	// creates in the template; each tenant's role takes them over.
	ownerSuffix = "_owner"
	// busyRetryLimit bounds how long Create and EnsureTemplate keep retrying
	// while a database they need is being accessed by other users (55006).
	// Each attempt already waits up to 5s inside the server.
	busyRetryLimit = 30 * time.Second
	// cleanupTimeout bounds unlocking and best-effort cleanup, which run even
	// when the caller's ctx is done.
	cleanupTimeout = 5 * time.Second
	// lockClass is the first key of every advisory lock this package takes
	// ("pgt" in ASCII), so its locks do not collide with the application's.
	lockClass = 0x706774
	// scramIterations matches the server default (scram_iterations).
	scramIterations = 4096
)

// Config configures a Provider. The zero value works: the endpoint is the
// admin pool's own host and port, the template is "pgtenant_template" and
// tenant "acme" gets database and role "t_acme". Config holds a secret
// (NamingKey): don't log it.
type Config struct {
	// Host is how the router reaches the server for tenant sessions; it is
	// returned in every Endpoint (and so stored in the catalog). Empty means
	// the admin pool's host, which may be a Unix socket directory.
	Host string
	// Port is the server's port for tenant sessions. Zero means the admin
	// pool's port.
	Port uint16
	// Template is the database every tenant's database is cloned from.
	// Empty means "pgtenant_template". At most 57 bytes: EnsureTemplate
	// builds it under the name Template+"_build" and its objects belong to
	// the role Template+"_owner".
	Template string
	// Prefix starts both the tenant's database name and its login role.
	// Empty means "t_".
	Prefix string
	// Naming is how the rest of the name comes from the tenant ID:
	// NamingPlain (empty means plain: the ID itself, so every tenant sees
	// every other tenant's ID in pg_database and pg_roles) or NamingHashed
	// (a keyed hash of the ID under NamingKey). Changing it affects only
	// tenants created afterwards: Create returns the name in the Endpoint
	// (which the catalog keeps), and Delete looks for a tenant under both
	// schemes.
	Naming string
	// NamingKey keys NamingHashed names: at least MinNamingKey bytes, the
	// same on every router instance, and never changed while tenants named
	// with it exist (Create and Delete find a tenant by recomputing its
	// name). Required for NamingHashed; with NamingPlain, when set, Delete
	// also finds tenants created under NamingHashed. Secret.
	NamingKey []byte
	// Strategy is CREATE DATABASE's STRATEGY: "wal_log" or "file_copy"
	// (PostgreSQL 15+). Empty means the server's default (wal_log).
	// wal_log is cheap for small templates; file_copy forces a checkpoint
	// but copies large templates faster.
	Strategy string
	// Spares is how many databases RunSpares keeps cloned ahead of demand,
	// ready to be renamed to a new tenant's: its Create then costs a few
	// catalog updates instead of a clone. Zero means none.
	Spares int
}

func (c *Config) template() string {
	if c.Template == "" {
		return DefaultTemplate
	}
	return c.Template
}

func (c *Config) owner() string { return c.template() + ownerSuffix }

func (c *Config) prefix() string {
	if c.Prefix == "" {
		return DefaultPrefix
	}
	return c.Prefix
}

// Validate reports whether c can be used. Create and EnsureTemplate call it,
// so calling it up front only moves the error earlier.
func (c *Config) Validate() error {
	switch strings.ToLower(c.Strategy) {
	case "", "wal_log", "file_copy":
	default:
		return fmt.Errorf("local: strategy %q: want wal_log, file_copy or empty", c.Strategy)
	}
	if n := maxIdentLen - len(buildSuffix); len(c.template()) > n {
		return fmt.Errorf("local: template name %q is longer than %d bytes", c.template(), n)
	}
	if err := checkName("template", c.template()); err != nil {
		return err
	}
	if c.Spares < 0 {
		return fmt.Errorf("local: spares %d: want 0 or more", c.Spares)
	}
	if len(c.prefix()) >= maxIdentLen {
		return fmt.Errorf("local: prefix %q is too long (max %d bytes)", c.prefix(), maxIdentLen-1)
	}
	switch c.Naming {
	case "", NamingPlain:
		if len(c.NamingKey) > 0 && len(c.NamingKey) < MinNamingKey {
			return fmt.Errorf("local: naming key is %d bytes; want at least %d", len(c.NamingKey), MinNamingKey)
		}
	case NamingHashed:
		if len(c.NamingKey) < MinNamingKey {
			return fmt.Errorf("local: naming %q needs a naming key of at least %d bytes (has %d)", NamingHashed, MinNamingKey, len(c.NamingKey))
		}
		if n := maxIdentLen - HashLen; len(c.prefix()) > n {
			return fmt.Errorf("local: prefix %q is too long for hashed naming (max %d bytes)", c.prefix(), n)
		}
	default:
		return fmt.Errorf("local: naming %q: want %s or %s", c.Naming, NamingPlain, NamingHashed)
	}
	return nil
}

// hashed returns tenant's name under NamingHashed; NamingKey must be set.
func (c *Config) hashed(tenant string) string {
	m := hmac.New(sha256.New, c.NamingKey)
	m.Write([]byte(tenant))
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(m.Sum(nil))
	return c.prefix() + strings.ToLower(enc[:HashLen])
}

// Provider provisions tenants on one Postgres server: each tenant gets a
// database cloned from the template database and a login role that owns it,
// and everything in it, and is the only role (besides superusers and the
// admin) that can connect to it. It implements provision.Provider and is safe
// for concurrent use.
//
// Create, Delete and EnsureTemplate serialise per tenant (and per template)
// with session advisory locks on the admin pool, so concurrent calls from
// several router instances are safe provided their admin pools connect to the
// same database (advisory locks are scoped to one database). Each call holds
// one admin connection for its duration.
type Provider struct {
	cfg   Config
	admin *pgxpool.Pool
	// claimed wakes RunSpares after a spare was taken.
	claimed chan struct{}
}

var _ provision.Provider = (*Provider)(nil)

// New returns a provider that administers the server through admin, a pool
// logged in as a superuser or as a role with CREATEDB and CREATEROLE. A
// non-superuser admin grants itself membership in each tenant role (Postgres
// requires it to create a database owned by that role). The caller keeps
// ownership of admin and closes it after the provider's last call. Sessions
// in other databases (EnsureTemplate's setup, Create's hand-over) are opened
// with admin's connection config; pool hooks such as BeforeConnect do not
// run for them.
//
// If admin has a query tracer, it sees the tenant roles' SCRAM verifiers
// (never the passwords): do not log SQL text at a level that is kept.
func New(cfg Config, admin *pgxpool.Pool) *Provider {
	return &Provider{cfg: cfg, admin: admin, claimed: make(chan struct{}, 1)}
}

// Name returns "local", the provider's name in the catalog.
func (p *Provider) Name() string { return "local" }

// Create makes tenant's login role (with a new random password) and its
// database, cloned from the template, hands the template's objects in it
// over to the role (in a short admin session in the new database), and
// returns the endpoint to log in to it.
//
// Create is idempotent: if the role exists its password is reset, and if
// the database exists (owned by the role) it is kept, so calling Create again
// heals a crash between creating a tenant and recording it. Each call resets
// the password, so only the endpoint returned by the latest call works. It
// refuses to adopt a role that has more privileges than a tenant role, or a
// database owned by another role.
//
// With Config.Spares (and RunSpares running), Create first tries to take a
// spare database cloned ahead of time, and clones the template only when
// none is ready.
//
// Create retries for up to 30s while the template is in use by another
// session (SQLSTATE 55006); it blocks until done or ctx ends. Errors name the
// failed step and never contain the password.
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	name, err := p.tenantName(tenant)
	if err != nil {
		return provision.Endpoint{}, err
	}
	password, verifier := newPassword()
	host, port := p.endpointAddr()
	ep := provision.Endpoint{
		Host:       host,
		Port:       port,
		Database:   name,
		User:       name,
		Password:   password,
		ProviderID: name,
	}
	err = p.withLock(ctx, name, func(c *pgxpool.Conn) error {
		if p.cfg.Spares > 0 && p.claimSpare(ctx, c, name, verifier) {
			return nil
		}
		return p.create(ctx, c, name, verifier)
	})
	if err != nil {
		return provision.Endpoint{}, redact(stepErr("create", tenant, err), password, verifier)
	}
	return ep, nil
}

// stepError is an error from one step of Create or Delete.
type stepError struct {
	what string
	err  error
}

func (e *stepError) Error() string { return e.what + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// stepErr adds the package, the step (or verb, if err is not a *stepError) and
// the tenant to err: `local: create database for tenant "acme": ...`.
func stepErr(verb, tenant string, err error) error {
	var s *stepError
	if errors.As(err, &s) {
		return fmt.Errorf("local: %s for tenant %q: %w", s.what, tenant, s.err)
	}
	return fmt.Errorf("local: %s tenant %q: %w", verb, tenant, err)
}

func (p *Provider) create(ctx context.Context, c *pgxpool.Conn, name, verifier string) error {
	role := ident(name)
	pw := quoteLiteral(verifier)

	_, err := c.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD "+pw)
	if isDuplicate(err, "42710") {
		// The role exists: adopt it unless it is more than a tenant role.
		// Resetting the password of a privileged role would hand it over.
		if err := checkAdoptableRole(ctx, c, name); err != nil {
			return &stepError{"adopt role", err}
		}
		err = retryConcurrent(ctx, func() error {
			_, err := c.Exec(ctx, "ALTER ROLE "+role+" WITH LOGIN PASSWORD "+pw)
			return err
		})
	}
	if err != nil {
		return &stepError{"create role", err}
	}
	return p.cloneFor(ctx, c, name)
}

// cloneFor clones the template as database name, owned by the existing role
// name, which alone (besides superusers and the admin) may connect to it and
// owns everything in it.
func (p *Provider) cloneFor(ctx context.Context, c *pgxpool.Conn, name string) error {
	role := ident(name)
	if c.Conn().PgConn().ParameterStatus("is_superuser") != "on" {
		// CREATE DATABASE ... OWNER needs the admin to be a member of (PG15)
		// or able to SET ROLE to (PG16+) the owner.
		err := retryConcurrent(ctx, func() error {
			_, err := c.Exec(ctx, "GRANT "+role+" TO CURRENT_USER")
			return err
		})
		if err != nil {
			return &stepError{"grant role to admin", err}
		}
	}

	sql := "CREATE DATABASE " + role + " TEMPLATE " + ident(p.cfg.template()) + " OWNER " + role
	if s := p.cfg.Strategy; s != "" {
		sql += " STRATEGY " + strings.ToLower(s) // whitelisted by Validate
	}
	err := retryBusy(ctx, func() error {
		_, err := c.Exec(ctx, sql)
		return err
	})
	if isDuplicate(err, "42P04") {
		err = checkDatabaseOwner(ctx, c, name, name)
	}
	if err != nil {
		return &stepError{"create database", err}
	}

	// Only the tenant's role (and superusers) may connect. One simple-protocol
	// batch runs as one implicit transaction.
	err = retryConcurrent(ctx, func() error {
		_, err := c.Exec(ctx, "REVOKE CONNECT, TEMPORARY ON DATABASE "+role+" FROM PUBLIC; "+
			"GRANT CONNECT, TEMPORARY ON DATABASE "+role+" TO "+role)
		return err
	})
	if err != nil {
		return &stepError{"restrict database", err}
	}

	// The clone's objects belong to the template's owner role: give them to
	// the tenant, so it can use and migrate its schema. REASSIGN OWNED also
	// covers shared objects, which is why the owner role owns none (not even
	// the template database). A template made by hand has no owner role.
	owner := p.cfg.owner()
	var hasOwner bool
	err = c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", owner).Scan(&hasOwner)
	if err == nil && hasOwner {
		err = p.runIn(ctx, name, "REASSIGN OWNED BY "+ident(owner)+" TO "+role)
	}
	if err != nil {
		return &stepError{"hand over schema", err}
	}
	return nil
}

// Delete drops tenant's database, terminating its sessions (WITH (FORCE),
// PostgreSQL 13+), then its role. It looks for them under the name
// Config.Naming gives and under the other scheme's (plain always, hashed when
// NamingKey is set), so a tenant created before Naming changed is deleted
// too. It returns an error wrapping provision.ErrTenantNotFound if none
// exists, and refuses to drop a database that the role of the same name does
// not own. It blocks until done or ctx ends.
func (p *Provider) Delete(ctx context.Context, tenant string) error {
	names, err := p.tenantNames(tenant)
	if err != nil {
		return err
	}
	found := false
	for _, name := range names {
		err := p.withLock(ctx, name, func(c *pgxpool.Conn) error {
			ok, err := dropTenant(ctx, c, name)
			found = found || ok
			return err
		})
		if err != nil {
			return stepErr("delete", tenant, err)
		}
	}
	if !found {
		return stepErr("delete", tenant, provision.ErrTenantNotFound)
	}
	return nil
}

// dropTenant drops database and role name, whichever exist, and reports
// whether either did. c holds name's lock.
func dropTenant(ctx context.Context, c *pgxpool.Conn, name string) (bool, error) {
	var dbExists, roleExists bool
	err := c.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1),
		EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)`, name).Scan(&dbExists, &roleExists)
	if err != nil {
		return false, &stepError{"look up", err}
	}
	if dbExists {
		if err := checkDatabaseOwner(ctx, c, name, name); err != nil {
			return false, &stepError{"drop database", err}
		}
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			return false, &stepError{"drop database", err}
		}
	}
	if roleExists {
		if err := checkAdoptableRole(ctx, c, name); err != nil {
			return dbExists, &stepError{"drop role", err}
		}
		if _, err := c.Exec(ctx, "DROP ROLE IF EXISTS "+ident(name)); err != nil {
			return dbExists, &stepError{"drop role", err}
		}
	}
	return dbExists || roleExists, nil
}

// EnsureTemplate creates the template database if it does not exist and,
// only when it creates it, runs setupSQL in it (the application's schema). It
// reports whether it created the template.
//
// setupSQL runs on a session of its own, as the role Template+"_owner"
// (NOLOGIN, created here, owning nothing outside the template), so that every
// object it creates can be handed to each tenant's role by Create. It may
// hold several statements; they run in one implicit transaction unless it
// manages its own. Statements that need more than database ownership (such
// as CREATE EXTENSION of an untrusted extension) can RESET ROLE first;
// objects they create stay the admin's, and tenants only get what it grants.
//
// The template is built under the name Template+"_build", then closed to
// PUBLIC, marked IS_TEMPLATE (so a non-superuser with CREATEDB can clone it)
// and renamed into place, so a failure half-way never leaves a half-built
// template: the next call starts over. The setup session is closed before
// EnsureTemplate returns, because CREATE DATABASE cannot clone a database
// anyone is connected to. Concurrent calls are safe; it blocks until done or
// ctx ends.
//
// EnsureTemplate does not touch an existing template. Note that tenants'
// roles can connect to the server's other databases (such as "postgres")
// whose CONNECT privilege is granted to PUBLIC, as it is by default; revoke it
// there if tenants must not see them.
func (p *Provider) EnsureTemplate(ctx context.Context, setupSQL string) (created bool, err error) {
	if err := p.cfg.Validate(); err != nil {
		return false, err
	}
	tmpl := p.cfg.template()
	err = p.withLock(ctx, tmpl, func(c *pgxpool.Conn) error {
		var exists bool
		err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)", tmpl).Scan(&exists)
		if err != nil || exists {
			return err
		}
		if err := p.buildTemplate(ctx, c, setupSQL); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("local: ensure template %q: %w", tmpl, err)
	}
	return created, nil
}

func (p *Provider) buildTemplate(ctx context.Context, c *pgxpool.Conn, setupSQL string) error {
	tmpl, owner := p.cfg.template(), p.cfg.owner()
	build := ident(tmpl + buildSuffix)
	exec := func(what, sql string) error {
		if _, err := c.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}

	_, err := c.Exec(ctx, "CREATE ROLE "+ident(owner)+" NOLOGIN")
	if isDuplicate(err, "42710") {
		err = checkAdoptableRole(ctx, c, owner)
	}
	if err != nil {
		return fmt.Errorf("create owner role: %w", err)
	}
	if c.Conn().PgConn().ParameterStatus("is_superuser") != "on" {
		if err := exec("grant owner role to admin", "GRANT "+ident(owner)+" TO CURRENT_USER"); err != nil {
			return err
		}
	}
	// A leftover from an earlier attempt that did not finish.
	if err := exec("drop leftover", "DROP DATABASE IF EXISTS "+build+" WITH (FORCE)"); err != nil {
		return err
	}
	// Owned by the owner role while setupSQL runs, so that it may create
	// objects in schema public (owned by pg_database_owner).
	err = retryBusy(ctx, func() error {
		_, err := c.Exec(ctx, "CREATE DATABASE "+build+" OWNER "+ident(owner))
		return err
	})
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	if err := exec("revoke connect", "REVOKE CONNECT, TEMPORARY ON DATABASE "+build+" FROM PUBLIC"); err != nil {
		return err
	}
	if setupSQL != "" {
		// SET ROLE is its own statement so that setupSQL may hold statements
		// that cannot run in a transaction block.
		if err := p.runIn(ctx, tmpl+buildSuffix, "SET ROLE "+ident(owner), setupSQL); err != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			_, _ = c.Exec(dctx, "DROP DATABASE IF EXISTS "+build+" WITH (FORCE)")
			return fmt.Errorf("setup sql: %w", err)
		}
	}
	// The owner role must own no shared object: Create's REASSIGN OWNED
	// would hand it to the tenant.
	if err := exec("set owner", "ALTER DATABASE "+build+" OWNER TO CURRENT_USER"); err != nil {
		return err
	}
	if err := exec("mark template", "ALTER DATABASE "+build+" IS_TEMPLATE true"); err != nil {
		return err
	}
	// The setup session's backend may still be exiting: rename waits for it
	// like CREATE DATABASE does.
	err = retryBusy(ctx, func() error {
		_, err := c.Exec(ctx, "ALTER DATABASE "+build+" RENAME TO "+ident(tmpl))
		return err
	})
	if err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	return nil
}

// runIn runs each of sqls (simple protocol) in database db on a connection
// of its own, derived from the admin pool's config, and closes it.
func (p *Provider) runIn(ctx context.Context, db string, sqls ...string) error {
	cfg := p.admin.Config().ConnConfig.Config.Copy()
	cfg.Database = db
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	for _, sql := range sqls {
		if _, err = conn.Exec(ctx, sql).ReadAll(); err != nil {
			break
		}
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if cerr := conn.Close(cctx); err == nil {
		err = cerr
	}
	return err
}

// withLock runs f on one admin connection while holding a session advisory
// lock keyed by name. The lock goes with the connection if unlocking fails.
func (p *Provider) withLock(ctx context.Context, name string, f func(*pgxpool.Conn) error) error {
	c, err := p.admin.Acquire(ctx)
	if err != nil {
		return &stepError{"acquire admin connection", err}
	}
	key := lockKey(name)
	if _, err := c.Exec(ctx, "SELECT pg_catalog.pg_advisory_lock($1::int4, $2::int4)", int32(lockClass), key); err != nil {
		c.Release()
		return &stepError{"lock", err}
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		var ok bool
		err := c.QueryRow(uctx, "SELECT pg_catalog.pg_advisory_unlock($1::int4, $2::int4)", int32(lockClass), key).Scan(&ok)
		if err != nil || !ok {
			// Closing the session releases its locks; the pool then discards it.
			_ = c.Conn().Close(uctx)
		}
		c.Release()
	}()
	return f(c)
}

func lockKey(name string) int32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return int32(h.Sum32())
}

// tenantName is tenant's database and role name under Config.Naming.
func (p *Provider) tenantName(tenant string) (string, error) {
	names, err := p.tenantNames(tenant)
	if err != nil {
		return "", err
	}
	return names[0], nil
}

// tenantNames is the names tenant may have: first the one Config.Naming
// gives, then the other scheme's (plain, and hashed when NamingKey is set),
// where that name is valid.
func (p *Provider) tenantNames(tenant string) ([]string, error) {
	if err := p.cfg.Validate(); err != nil {
		return nil, err
	}
	if tenant == "" {
		return nil, errors.New("local: empty tenant ID")
	}
	plain, plainErr := p.checkTenantName(tenant, p.cfg.prefix()+tenant)
	if p.cfg.Naming != NamingHashed {
		if plainErr != nil {
			return nil, plainErr
		}
		names := []string{plain}
		if len(p.cfg.NamingKey) > 0 {
			if h, err := p.checkTenantName(tenant, p.cfg.hashed(tenant)); err == nil {
				names = append(names, h)
			}
		}
		return names, nil
	}
	h, err := p.checkTenantName(tenant, p.cfg.hashed(tenant))
	if err != nil {
		return nil, err
	}
	names := []string{h}
	if plainErr == nil {
		names = append(names, plain)
	}
	return names, nil
}

// checkTenantName returns name if it can be tenant's database and role.
func (p *Provider) checkTenantName(tenant, name string) (string, error) {
	if err := checkName("database", name); err != nil {
		return "", fmt.Errorf("%w (tenant %q)", err, tenant)
	}
	// With a prefix like "pgtenant_" a tenant could be named after the
	// template's database or role.
	if t := p.cfg.template(); name == t || name == t+buildSuffix || name == t+ownerSuffix {
		return "", fmt.Errorf("local: tenant %q: name %q is reserved for the template", tenant, name)
	}
	return name, nil
}

func checkName(what, name string) error {
	if len(name) > maxIdentLen {
		return fmt.Errorf("local: %s name %q is longer than %d bytes", what, name, maxIdentLen)
	}
	if strings.ContainsRune(name, 0) {
		return fmt.Errorf("local: %s name %q contains a NUL byte", what, name)
	}
	return nil
}

func (p *Provider) endpointAddr() (string, uint16) {
	host, port := p.cfg.Host, p.cfg.Port
	if host == "" || port == 0 {
		cc := p.admin.Config().ConnConfig
		if host == "" {
			host = cc.Host
		}
		if port == 0 {
			port = cc.Port
		}
	}
	return host, port
}

// checkAdoptableRole fails if role is privileged beyond a tenant role or is
// the admin's own role.
func checkAdoptableRole(ctx context.Context, c *pgxpool.Conn, role string) error {
	var privileged bool
	err := c.QueryRow(ctx, `SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls
		OR rolname = current_user FROM pg_catalog.pg_roles WHERE rolname = $1`, role).Scan(&privileged)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // dropped meanwhile; the next statement reports it
	}
	if err != nil {
		return err
	}
	if privileged {
		return fmt.Errorf("role %q exists and is privileged; refusing to use it as a tenant role", role)
	}
	return nil
}

// checkDatabaseOwner fails unless database db exists and is owned by owner.
func checkDatabaseOwner(ctx context.Context, c *pgxpool.Conn, db, owner string) error {
	var got string
	err := c.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = $1`, db).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("database %q vanished while checking its owner", db)
	}
	if err != nil {
		return err
	}
	if got != owner {
		return fmt.Errorf("database %q exists but is owned by %q, not %q", db, got, owner)
	}
	return nil
}

// isDuplicate reports whether err says the object already exists: code is
// the object's duplicate SQLSTATE; 23505 is what a concurrent CREATE of the
// same name raises from the catalog's unique index.
func isDuplicate(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == code || pe.Code == "23505")
}

// retryBusy retries f while it fails with 55006 (object in use: someone is
// connected to the source database), with jittered backoff, for at most
// busyRetryLimit or until ctx ends.
func retryBusy(ctx context.Context, f func() error) error {
	return retry(ctx, busyRetryLimit, f, func(pe *pgconn.PgError) bool { return pe.Code == "55006" })
}

// retryConcurrent retries f when a concurrent catalog update of the same
// object beat it ("tuple concurrently updated"; possible when two callers do
// not share an advisory lock), or on a deadlock or serialization failure.
func retryConcurrent(ctx context.Context, f func() error) error {
	return retry(ctx, 5*time.Second, f, func(pe *pgconn.PgError) bool {
		return pe.Code == "40001" || pe.Code == "40P01" ||
			(pe.Code == "XX000" && strings.Contains(pe.Message, "concurrently"))
	})
}

func retry(ctx context.Context, limit time.Duration, f func() error, retryable func(*pgconn.PgError) bool) error {
	deadline := time.Now().Add(limit)
	backoff := 20 * time.Millisecond
	for {
		err := f()
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || !retryable(pe) || time.Now().After(deadline) {
			return err
		}
		d := backoff/2 + mrand.N(backoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// quoteLiteral quotes s as a standard-conforming SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// newPassword returns a random password (32 bytes, base64url) and its
// SCRAM-SHA-256 verifier, which is what the server stores. Only the verifier
// is sent to the server, so the password never appears in SQL text, server
// logs or pg_stat_activity.
func newPassword() (password, verifier string) {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	password = base64.RawURLEncoding.EncodeToString(b)
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return password, scramVerifier(password, salt, scramIterations)
}

// scramVerifier computes the verifier Postgres stores for password
// (RFC 5802/7677, in Postgres's "SCRAM-SHA-256$iter:salt$StoredKey:ServerKey"
// form). password must be ASCII without control characters, so that SASLprep
// leaves it unchanged.
func scramVerifier(password string, salt []byte, iter int) string {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		panic(err) // only for invalid parameters, which are constants here
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iter) + ":" + b64(salt) + "$" + b64(storedKey[:]) + ":" + b64(serverKey)
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// redact returns err unchanged unless one of the secrets appears in its text
// or in any *pgconn.PgError it wraps; then it returns an error whose text and
// wrapped PgError (a scrubbed copy, keeping the SQLSTATE) have every secret
// replaced by "xxxxx". pgx does not echo SQL text in errors today; this keeps
// it that way for the password whatever a future version or a server message
// does.
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	scrub := func(s string) string {
		for _, secret := range secrets {
			if secret != "" {
				s = strings.ReplaceAll(s, secret, "xxxxx")
			}
		}
		return s
	}
	msg := err.Error()
	var pe *pgconn.PgError
	hasPG := errors.As(err, &pe)
	leak := scrub(msg) != msg
	var clean pgconn.PgError
	if hasPG {
		clean = *pe
		for _, f := range []*string{&clean.Message, &clean.Detail, &clean.Hint, &clean.InternalQuery, &clean.Where} {
			if s := scrub(*f); s != *f {
				*f, leak = s, true
			}
		}
	}
	if !leak {
		return err
	}
	r := &redactedError{msg: scrub(msg)}
	if hasPG {
		r.pg = &clean
	}
	return r
}

// redactedError is an error whose secrets were scrubbed. It unwraps only to
// a scrubbed copy of the original *pgconn.PgError, if there was one.
type redactedError struct {
	msg string
	pg  *pgconn.PgError
}

func (e *redactedError) Error() string { return e.msg }

func (e *redactedError) Unwrap() error {
	if e.pg == nil {
		return nil
	}
	return e.pg
}
