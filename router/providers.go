package router

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/rds"
	"github.com/pgtenant/pgtenant/provision/static"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// StaticSettings is provider.static: routes to databases that already
// exist (provision/static).
type StaticSettings struct {
	// Routes maps tenant IDs to DSNs; a DSN's password may be ${NAME}.
	Routes map[string]string `yaml:"routes"`
	// Template is a DSN with {tenant} for any other tenant.
	Template string `yaml:"template"`
	// PasswordEnv names the environment variable with the template's password.
	PasswordEnv string `yaml:"password_env"`
}

// StaticConfig maps provider.static to the static package's Config.
func (fc *Config) StaticConfig() static.Config {
	s := fc.Provider.Static
	return static.Config{Routes: s.Routes, Template: s.Template, PasswordEnv: s.PasswordEnv}
}

// knownProviders are the provider.kind and provider.also values this
// build supports.
var knownProviders = []string{"local", "neon", static.Name, "supabase", "aurora", "rds"}

// ProviderNames returns the configured providers: provider.kind first,
// then provider.also.
func (fc *Config) ProviderNames() []string {
	return append([]string{fc.Provider.Kind}, fc.Provider.Also...)
}

// validateProviders checks provider.kind, provider.also and the section of
// each provider they name.
func (fc *Config) validateProviders() []error {
	var errs []error
	names := fc.ProviderNames()
	for i, name := range names {
		key := "provider.kind"
		if i > 0 {
			key = fmt.Sprintf("provider.also[%d]", i-1)
		}
		if !slices.Contains(knownProviders, name) {
			errs = append(errs, fmt.Errorf("%s: %q is not supported (supported: %v)", key, name, knownProviders))
			continue
		}
		if slices.Index(names, name) < i {
			errs = append(errs, fmt.Errorf("%s: %q is named twice (provider.kind is the default; provider.also lists the others)", key, name))
			continue
		}
		errs = append(errs, fc.validateProvider(name)...)
	}
	// Neon, static and supabase keep no database of their own to put the catalog in.
	if fc.Catalog.DSN == "" && !slices.Contains(names, "local") {
		errs = append(errs, fmt.Errorf("catalog.dsn: the %s provider needs a catalog database: set %s", fc.Provider.Kind, EnvCatalogDSN))
	}
	return errs
}

func (fc *Config) validateProvider(name string) []error {
	var errs []error
	switch name {
	case "local":
		if fc.Provider.Local.AdminDSN == "" {
			errs = append(errs, fmt.Errorf("provider.local.admin_dsn: empty: set %s", EnvAdminDSN))
		}
		errs = append(errs, fc.validateNaming()...) // naming.go
	case "neon":
		if nc, err := fc.NeonConfig(); err != nil {
			errs = append(errs, err)
		} else if err := nc.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("provider.neon: %w (the API key comes from %s)", err, EnvNeonAPIKey))
		}
	case static.Name:
		if _, err := static.New(fc.StaticConfig()); err != nil {
			errs = append(errs, fmt.Errorf("provider.static: %w", err))
		}
	case "supabase":
		errs = append(errs, fc.validateSupabase()...) // supabase.go
	case "aurora", "rds":
		errs = append(errs, fc.validateRDS(rds.Kind(name))...) // aws.go
	}
	return errs
}

// ProviderUpstream is one provider and how the proxy reaches its
// endpoints.
type ProviderUpstream struct {
	Provider provision.Provider
	Proxy    proxy.UpstreamConfig
}

// providerTLS is the upstream settings of a provider of provider.also:
// its own TLS default (upstream.tls, endpoint_option and forward_params
// are the default provider's), the roots of upstream.ca_file.
func (fc *Config) providerTLS(kind string, roots *x509.CertPool) (proxy.UpstreamConfig, error) {
	choice, err := fc.upstreamTLSFor(kind, false)
	if err != nil {
		return proxy.UpstreamConfig{}, err
	}
	up := proxy.UpstreamConfig{TLS: choice.Mode, RootCAs: roots}
	if kind == "neon" {
		up.ForwardParams = NeonPoolerParams
	}
	return up, nil
}

// buildAlso builds the providers of provider.also into u. On error what it
// built is released by u.Close.
func buildAlso(ctx context.Context, cfg Config, log *slog.Logger, ensureTemplate bool, u *Upstream) error {
	for _, kind := range cfg.Provider.Also {
		one, err := buildProvider(ctx, cfg, kind, log, ensureTemplate)
		if err != nil {
			return fmt.Errorf("provider.also %s: %w", kind, err)
		}
		prev := u.Close
		u.Close = func() { one.close(); prev() }
		if u.CatalogDSN == "" {
			u.CatalogDSN = one.catalogDSN
		}
		pu, err := cfg.providerTLS(kind, u.Proxy.RootCAs)
		if err != nil {
			return err
		}
		if pu.RootCAs, err = cfg.rdsRoots(kind, pu.RootCAs); err != nil { // aws.go
			return err
		}
		pu.EndpointOption = false
		u.Also = append(u.Also, ProviderUpstream{Provider: one.provider, Proxy: pu})
	}
	return nil
}

// Providers returns every provider of u by name: the default and those of
// provider.also.
func (u *Upstream) Providers() map[string]provision.Provider {
	m := make(map[string]provision.Provider, 1+len(u.Also))
	for _, a := range u.Also {
		m[a.Provider.Name()] = a.Provider
	}
	if u.Provider != nil {
		m[u.Provider.Name()] = u.Provider
	}
	return m
}

// provisioners is Providers for the resolver.
func (u *Upstream) provisioners() map[string]resolver.Provisioner {
	m := make(map[string]resolver.Provisioner, 1+len(u.Also))
	for name, p := range u.Providers() {
		m[name] = p
	}
	return m
}

// deprovisioners is the admin API's Providers: nil with one provider.
func (u *Upstream) deprovisioners() map[string]adminapi.Deprovisioner {
	if len(u.Also) == 0 {
		return nil
	}
	m := make(map[string]adminapi.Deprovisioner, 1+len(u.Also))
	for name, p := range u.Providers() {
		m[name] = p
	}
	return m
}

// proxyUpstreams is the proxy's Config.Upstreams: nil with one provider
// (the proxy then looks nothing up), else each provider's settings.
func (u *Upstream) proxyUpstreams() map[string]*proxy.UpstreamConfig {
	if len(u.Also) == 0 {
		return nil
	}
	m := make(map[string]*proxy.UpstreamConfig, 1+len(u.Also))
	for i := range u.Also {
		m[u.Also[i].Provider.Name()] = &u.Also[i].Proxy
	}
	if u.Provider != nil {
		m[u.Provider.Name()] = &u.Proxy
	}
	return m
}

// attachCatalog gives the static providers among u's the catalog's
// registered routes, unless they were given a store already (a test's).
func (u *Upstream) attachCatalog(cat *catalog.Catalog) {
	for _, p := range u.Providers() {
		if sp, ok := p.(*static.Provider); ok && !sp.HasStore() {
			sp.SetStore(StaticStore{cat})
		}
	}
}

// StaticStore is the catalog as the static provider's store of registered
// routes.
type StaticStore struct{ Cat *catalog.Catalog }

// StaticRoute implements static.Store.
func (s StaticStore) StaticRoute(ctx context.Context, tenant string) (provision.Endpoint, bool, error) {
	return s.Cat.RouteOn(ctx, tenant, static.Name, static.RegisteredID)
}

// DeleteStaticRoute implements static.Store.
func (s StaticStore) DeleteStaticRoute(ctx context.Context, tenant string) error {
	return s.Cat.DeleteRouteOn(ctx, tenant, static.Name, static.RegisteredID)
}
