package router

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/static"
	"github.com/pgtenant/pgtenant/resolver"
)

// placements is the per-tenant choice of provider and the registered
// static routes, as the admin API sets them (adminapi.Placements and
// adminapi.Routes): stored in the catalog, checked against the providers
// this router has.
type placements struct {
	cat       *catalog.Catalog
	res       *resolver.Resolver
	providers []string // provider.kind first, then provider.also
}

var (
	_ adminapi.Placements = (*placements)(nil)
	_ adminapi.Routes     = (*placements)(nil)
)

func newPlacements(cat *catalog.Catalog, res *resolver.Resolver, u *Upstream) *placements {
	p := &placements{cat: cat, res: res}
	if u.Provider != nil {
		p.providers = append(p.providers, u.Provider.Name())
	}
	for _, a := range u.Also {
		p.providers = append(p.providers, a.Provider.Name())
	}
	return p
}

// Default implements adminapi.Placements.
func (p *placements) Default() string {
	if len(p.providers) == 0 {
		return ""
	}
	return p.providers[0]
}

// Place implements adminapi.Placements.
func (p *placements) Place(ctx context.Context, tenant, provider string) error {
	if !slices.Contains(p.providers, provider) {
		return fmt.Errorf("%w: provider %q is not configured on this router (configured: %v; add it to provider.also)", adminapi.ErrInvalid, provider, p.providers)
	}
	return p.cat.Place(ctx, tenant, provider)
}

// Placement implements adminapi.Placements.
func (p *placements) Placement(ctx context.Context, tenant string) (string, bool, error) {
	return p.cat.Placement(ctx, tenant)
}

// Unplace implements adminapi.Placements.
func (p *placements) Unplace(ctx context.Context, tenant string) (bool, error) {
	return p.cat.Unplace(ctx, tenant)
}

// SetRoute implements adminapi.Routes.
func (p *placements) SetRoute(ctx context.Context, tenant string, spec adminapi.RouteSpec) (provision.Endpoint, error) {
	if !slices.Contains(p.providers, static.Name) {
		return provision.Endpoint{}, fmt.Errorf("%w: this router has no static provider: add static to provider.also (or make it provider.kind)", adminapi.ErrNoProvider)
	}
	ep, err := routeSpecEndpoint(spec)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("%w: %w", adminapi.ErrInvalid, err)
	}
	ep.ProviderID = static.RegisteredID
	if err := p.cat.SetRoute(ctx, tenant, static.Name, ep); err != nil {
		return provision.Endpoint{}, err
	}
	p.res.Invalidate(tenant) // this router; the others when their cache.ttl ends
	ep.Provider = static.Name
	return ep, nil
}

// DeleteRoute implements adminapi.Routes.
func (p *placements) DeleteRoute(ctx context.Context, tenant string) error {
	err := p.cat.DeleteRouteOn(ctx, tenant, static.Name, static.RegisteredID)
	p.res.Invalidate(tenant)
	return err
}

// routeSpecEndpoint parses spec as the static provider parses its DSNs.
// Errors never repeat the DSN or the password.
func routeSpecEndpoint(spec adminapi.RouteSpec) (provision.Endpoint, error) {
	dsn := spec.DSN
	if dsn != "" {
		if spec.Host != "" || spec.Port != 0 || spec.Database != "" || spec.User != "" || spec.Password != "" || spec.SSLMode != "" {
			return provision.Endpoint{}, fmt.Errorf("give either dsn or host/port/database/user/password/sslmode, not both")
		}
	} else {
		if spec.Host == "" || spec.User == "" {
			return provision.Endpoint{}, fmt.Errorf("host and user are required (or give a dsn)")
		}
		port := spec.Port
		if port == 0 {
			port = 5432
		}
		u := url.URL{Scheme: "postgres", User: url.UserPassword(spec.User, spec.Password),
			Host: net.JoinHostPort(spec.Host, strconv.Itoa(int(port))), Path: "/" + spec.Database}
		if spec.Password == "" {
			u.User = url.User(spec.User)
		}
		if spec.Database == "" {
			u.Path = "/" + spec.User
		}
		switch spec.SSLMode {
		case "":
		case "disable", "require", "verify-full":
			u.RawQuery = "sslmode=" + spec.SSLMode
		default:
			return provision.Endpoint{}, fmt.Errorf("sslmode %q: want disable, require or verify-full", spec.SSLMode)
		}
		dsn = u.String()
	}
	ep, err := static.ParseDSN(dsn)
	if err != nil {
		return provision.Endpoint{}, fmt.Errorf("dsn: %w", err)
	}
	return ep, nil
}
