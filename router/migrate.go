package router

import (
	"context"
	"log/slog"
	"net"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/proxy"
)

// MigrateConfig is the migrate.Config for this upstream: the tenants'
// sessions as MigrateConnect opens them, the provider's templates
// (MigrateTemplates) and the migrations section's timeouts.
func (u *Upstream) MigrateConfig(cat *catalog.Catalog, files []migrate.Migration, ms MigrationSettings, log *slog.Logger) migrate.Config {
	cfg := migrate.Config{
		Catalog:          cat,
		Files:            files,
		ConnectTenant:    u.MigrateConnect(),
		LockTimeout:      ms.LockTimeout,
		StatementTimeout: ms.StatementTimeout,
		Log:              log,
	}
	cfg.Template, cfg.Templates = u.MigrateTemplates()
	return cfg
}

// MigrateConnect returns how migration sessions log in to a tenant's
// database with its route's credentials (migrate.Config.ConnectTenant): as
// the proxy reaches it (upstream TLS and server name,
// upstream.dial_override, upstream.endpoint_option), except that a route
// through a transaction-mode pooler (Neon's -pooler host, Supabase's port
// 6543) goes where its provider keeps a session (provision.SessionRouter):
// a migration needs one (docs/neon-api.md §8.2).
func (u *Upstream) MigrateConnect() func(ctx context.Context, tenant string, ep provision.Endpoint) (*pgx.Conn, error) {
	byName := u.Providers() // providers.go
	return func(ctx context.Context, _ string, ep provision.Endpoint) (*pgx.Conn, error) {
		p := byName[ep.Provider]
		if p == nil {
			p = u.Provider
		}
		if sr, ok := p.(provision.SessionRouter); ok {
			ep = sr.SessionEndpoint(ep)
		}
		return u.connect(ctx, ep)
	}
}

// proxyFor is the upstream settings of provider (the default's when it is
// not one of provider.also).
func (u *Upstream) proxyFor(provider string) *proxy.UpstreamConfig {
	for i := range u.Also {
		if u.Also[i].Provider.Name() == provider {
			return &u.Also[i].Proxy
		}
	}
	return &u.Proxy
}

// connect logs in to ep as the proxy would reach it.
func (u *Upstream) connect(ctx context.Context, ep provision.Endpoint) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.Database, cfg.User, cfg.Password = ep.Host, ep.Port, ep.Database, ep.User, ep.Password
	pc := u.proxyFor(ep.Provider)
	cfg.TLSConfig = pc.RouteTLSConfig(ep)
	cfg.RuntimeParams["application_name"] = "pgtenant migrate"
	if pc.EndpointOption && cfg.TLSConfig != nil {
		// No SNI: the endpoint ID goes in options (docs/neon-api.md §8.3).
		cfg.RuntimeParams["options"] = "endpoint=" + provision.EndpointID(ep.Host)
	}
	if dial := u.Dial; dial != nil {
		// The override is where every upstream host is reached; its names
		// need not resolve here (a fake's *.neon.tech hosts).
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }
		cfg.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// MigrateTemplates returns the templates migrate.Up brings to the target
// before any tenant, so that tenants created afterwards are born current:
// the local provider's template database; the Neon provider's template
// branches (branch mode, one per project, reached over their endpoint's
// direct host; finding that endpoint and its password takes a few API
// calls, within the client's rate limit). Neon's project mode has none:
// a tenant project is created empty and is brought to the target by the
// next migrate up (or catch-up on connect).
func (u *Upstream) MigrateTemplates() (*migrate.Template, []migrate.Template) {
	switch p := u.Provider.(type) {
	case *local.Provider:
		return &migrate.Template{Name: p.TemplateName(), Connect: p.ConnectTemplate, Migrated: p.SetTemplateVersion}, nil
	case *neon.Provider:
		var out []migrate.Template
		for _, bp := range p.TemplateBranches() {
			name := bp.ID + "/" + bp.ParentBranchID
			if bp.ParentBranchID == "" {
				name = bp.ID + "/default"
			}
			out = append(out, migrate.Template{Name: "neon:" + name, Connect: func(ctx context.Context) (*pgx.Conn, error) {
				ep, err := p.TemplateRoute(ctx, bp.ID)
				if err != nil {
					return nil, err
				}
				return u.connect(ctx, ep)
			}})
		}
		return nil, out
	}
	return nil, nil
}
