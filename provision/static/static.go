package static

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/provision"
)

// Name is the static provider's name, as the catalog records it.
const Name = "static"

// RegisteredID is the ProviderID of a route registered at run time (the
// Store's); a configured route's is "route:<tenant>", the template's
// "template".
const RegisteredID = "registered"

// ErrNoRoute means no source knows the tenant: no configured route, no
// template, no registered route. The static provider never creates one.
// It wraps provision.ErrTenantNotFound, which tells the resolver that the
// tenant does not exist (rather than that creating it failed).
var ErrNoRoute = fmt.Errorf("static: no route for tenant (%w)", provision.ErrTenantNotFound)

// Upstream TLS modes a route can carry (provision.Endpoint.TLS); the
// proxy's names, repeated here because providers import only provision.
const (
	tlsDisable    = "disable"
	tlsRequire    = "require"
	tlsVerifyFull = "verify-full"
)

// Store keeps the routes registered at run time (the catalog). Safe for
// concurrent use.
type Store interface {
	// StaticRoute returns tenant's registered route; ok is false when
	// there is none (or the tenant lives on another provider).
	StaticRoute(ctx context.Context, tenant string) (ep provision.Endpoint, ok bool, err error)
	// DeleteStaticRoute removes tenant's registered route. It returns an
	// error wrapping provision.ErrTenantNotFound when there is none.
	DeleteStaticRoute(ctx context.Context, tenant string) error
}

// Config configures a Provider. The zero value knows no tenant.
type Config struct {
	// Routes maps tenant IDs to DSNs (libpq URL or keyword form). A DSN's
	// password may be ${NAME}: the value of environment variable NAME.
	Routes map[string]string
	// Template, when not empty, is a DSN for any tenant not in Routes, with
	// {tenant} standing for the tenant ID (for example
	// "postgres://{tenant}_app@db-{tenant}.internal:5432/{tenant}"). Its
	// password is PasswordEnv's value, or ${NAME} in the template.
	Template string
	// PasswordEnv names the environment variable holding the template's
	// password (so the password is not in the file).
	PasswordEnv string
	// Getenv reads the environment. Nil means os.Getenv.
	Getenv func(string) string
}

// Provider finds routes of existing databases. It is safe for concurrent
// use. Create one with New.
type Provider struct {
	routes   map[string]provision.Endpoint // parsed Config.Routes
	template string                        // with ${NAME} replaced by passwordMark
	password string                        // the template's, from the environment
	store    atomic.Pointer[Store]
}

var _ provision.Provider = (*Provider)(nil)

// passwordMark stands for a password from the environment while a DSN is
// parsed; it cannot occur in a tenant ID.
const passwordMark = "PGTENANT\x1fPASSWORD"

// envRef is ${NAME} in a DSN.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// safeTenant is what a tenant ID may contain to be put into a template:
// the default tenant pattern's characters and a few more, none of which
// means anything in a URL or a keyword DSN.
var safeTenant = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// New parses cfg's routes and template (its DSNs are checked here, once)
// and reads the passwords it names from the environment. Errors name the
// route or key, never a DSN (which may hold a password).
func New(cfg Config) (*Provider, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	p := &Provider{routes: make(map[string]provision.Endpoint, len(cfg.Routes))}
	tenants := make([]string, 0, len(cfg.Routes))
	for t := range cfg.Routes {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	var errs []error
	for _, t := range tenants {
		dsn, pw, err := withEnvPassword(cfg.Routes[t], getenv)
		if err == nil {
			var ep provision.Endpoint
			if ep, err = ParseDSN(dsn); err == nil {
				if ep.Password == passwordMark {
					ep.Password = pw
				}
				ep.ProviderID = "route:" + t
				p.routes[t] = ep
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("routes[%s]: %w", t, err))
		}
	}
	if cfg.Template != "" {
		if err := p.setTemplate(cfg, getenv); err != nil {
			errs = append(errs, fmt.Errorf("template: %w", err))
		}
	} else if cfg.PasswordEnv != "" {
		errs = append(errs, errors.New("password_env is set but there is no template to use it"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("static: %w", err)
	}
	return p, nil
}

func (p *Provider) setTemplate(cfg Config, getenv func(string) string) error {
	if !strings.Contains(cfg.Template, "{tenant}") {
		return errors.New("no {tenant} in it: every tenant would get the same database")
	}
	tpl, pw, err := withEnvPassword(cfg.Template, getenv)
	if err != nil {
		return err
	}
	if cfg.PasswordEnv != "" {
		if tpl != cfg.Template {
			return errors.New("both ${NAME} and password_env give the password: keep one")
		}
		if pw = getenv(cfg.PasswordEnv); pw == "" {
			return fmt.Errorf("password_env: environment variable %s is not set", cfg.PasswordEnv)
		}
	}
	// Check it once with a tenant ID of the default pattern's shape.
	ep, err := ParseDSN(strings.ReplaceAll(tpl, "{tenant}", "t0"))
	if err != nil {
		return err
	}
	if ep.Password != "" && ep.Password != passwordMark {
		return errors.New("the password is written in the template: use ${NAME} or password_env so that it comes from the environment")
	}
	p.template, p.password = tpl, pw
	return nil
}

// withEnvPassword replaces one ${NAME} in dsn by passwordMark and returns
// NAME's value. ${NAME} may only stand for the password: ParseDSN's result
// must carry the mark as its password (checked by the callers).
func withEnvPassword(dsn string, getenv func(string) string) (string, string, error) {
	refs := envRef.FindAllStringSubmatchIndex(dsn, -1)
	switch len(refs) {
	case 0:
		return dsn, "", nil
	case 1:
	default:
		return "", "", errors.New("more than one ${NAME}: only the password may come from the environment")
	}
	name := dsn[refs[0][2]:refs[0][3]]
	pw := getenv(name)
	if pw == "" {
		return "", "", fmt.Errorf("environment variable %s is not set", name)
	}
	out := dsn[:refs[0][0]] + passwordMark + dsn[refs[0][1]:]
	ep, err := ParseDSN(strings.ReplaceAll(out, "{tenant}", "t0"))
	if err != nil {
		return "", "", err
	}
	if ep.Password != passwordMark {
		return "", "", fmt.Errorf("${%s} must be the whole password", name)
	}
	return out, pw, nil
}

// ParseDSN turns a DSN (libpq URL or keyword form) into an endpoint: its
// first host, port (default 5432), database, user, password, and TLS mode
// from sslmode (see the package doc). The error never repeats the DSN.
func ParseDSN(dsn string) (provision.Endpoint, error) {
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return provision.Endpoint{}, errors.New("cannot be parsed as a libpq URL or keyword DSN")
	}
	ep := provision.Endpoint{Host: cc.Host, Port: cc.Port, Database: cc.Database, User: cc.User, Password: cc.Password}
	switch {
	case ep.Host == "" || strings.HasPrefix(ep.Host, "/"):
		return provision.Endpoint{}, errors.New("no TCP host in it (Unix sockets are not supported)")
	case ep.User == "":
		return provision.Endpoint{}, errors.New("no user in it")
	case ep.Database == "":
		ep.Database = ep.User // libpq's default
	}
	t := cc.TLSConfig
	switch {
	case len(cc.Fallbacks) > 0: // prefer, allow (or several hosts): no explicit choice
		ep.TLS = defaultTLS(ep.Host)
	case t == nil:
		ep.TLS = tlsDisable
	case t.InsecureSkipVerify && t.VerifyPeerCertificate == nil && t.VerifyConnection == nil:
		ep.TLS = tlsRequire
	case !t.InsecureSkipVerify && t.ServerName != "":
		ep.TLS = tlsVerifyFull
	default:
		return provision.Endpoint{}, errors.New("sslmode verify-ca is not supported: use verify-full (or require)")
	}
	return ep, nil
}

// defaultTLS is the TLS mode of a route whose DSN chose none: plaintext
// only to a loopback host, encrypted to any other.
func defaultTLS(host string) string {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return tlsDisable
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return tlsDisable
	}
	return tlsRequire
}

// SetStore gives the provider the routes registered at run time (the
// catalog, once the router has opened it). Safe for concurrent use.
func (p *Provider) SetStore(s Store) { p.store.Store(&s) }

// HasStore reports whether SetStore was called: a router keeps a store it
// is given along with the provider (router.Options.Upstream).
func (p *Provider) HasStore() bool { return p.store.Load() != nil }

func (p *Provider) storeOrNil() Store {
	if s := p.store.Load(); s != nil {
		return *s
	}
	return nil
}

// Name returns "static".
func (p *Provider) Name() string { return Name }

// Create finds tenant's route: the configured route, else the template,
// else the registered route. It creates nothing; a tenant none of them
// knows gets an error wrapping ErrNoRoute.
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	if ep, ok := p.routes[tenant]; ok {
		return ep, nil
	}
	if p.template != "" {
		if !safeTenant.MatchString(tenant) {
			return provision.Endpoint{}, fmt.Errorf("static: tenant %q has characters a DSN template cannot take", tenant)
		}
		ep, err := ParseDSN(strings.ReplaceAll(p.template, "{tenant}", tenant))
		if err != nil {
			return provision.Endpoint{}, fmt.Errorf("static: template for tenant %q: %w", tenant, err)
		}
		ep.Password = p.password // New refused a password written in the template
		ep.ProviderID = "template"
		return ep, nil
	}
	if s := p.storeOrNil(); s != nil {
		ep, ok, err := s.StaticRoute(ctx, tenant)
		if err != nil {
			return provision.Endpoint{}, fmt.Errorf("static: registered route of tenant %q: %w", tenant, err)
		}
		if ok {
			return ep, nil
		}
	}
	return provision.Endpoint{}, fmt.Errorf("%w %q", ErrNoRoute, tenant)
}

// Delete removes tenant's registered route. A configured or template
// route is not the provider's to delete (it is in the file): Delete
// returns an error wrapping provision.ErrTenantNotFound for it, as for a
// tenant it does not know, and the next connect finds the route again.
func (p *Provider) Delete(ctx context.Context, tenant string) error {
	if s := p.storeOrNil(); s != nil {
		if _, configured := p.routes[tenant]; !configured {
			return s.DeleteStaticRoute(ctx, tenant)
		}
	}
	return fmt.Errorf("static: tenant %q: no registered route: %w", tenant, provision.ErrTenantNotFound)
}
