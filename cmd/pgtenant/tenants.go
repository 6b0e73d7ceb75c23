package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/spf13/pflag"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/router"
)

const tenantsUsage = `Usage: pgtenant tenants <list|show|passwd|place|route|delete> --config FILE [flags]
       pgtenant tenants <list|show|warm|evict|block|unblock|pool-mode|passwd|place|route|delete> --admin URL [flags]

  list [--after TENANT] [--limit N]   tenants in the catalog, in ID order (no secrets)
  show TENANT                         the tenant's route and, for neon, its branch/project at Neon
                                      (with --admin: also cached?, blocked?, live sessions on that router)
  delete TENANT --yes                 delete the tenant's database (branch/project) and its catalog row
  warm TENANT                         --admin only: create the tenant now, ahead of its first connect
  evict TENANT                        --admin only: forget the tenant's cached route on that router
  block TENANT | unblock TENANT       --admin only: refuse (and end) the tenant's connections, or let them in again
  pool-mode TENANT MODE               --admin only: the tenant's pool mode for new connections, on every router:
                                      session, transaction, off (unpooled), or default (the router's pool.mode)
  passwd TENANT                       set the tenant's own secret (auth.per_tenant), which opens this tenant only:
                                      asked for on the terminal, or --password-stdin, or --verifier; --delete removes it
  place TENANT PROVIDER               create the tenant on PROVIDER (provider.kind or one of provider.also) rather than
                                      the default; refused once it exists elsewhere; PROVIDER default removes the placement
  route TENANT --dsn-stdin | --dsn DSN
                                      register the tenant's route to an existing database (static provider), the
                                      password encrypted in the catalog; --delete removes it. Prefer --dsn-stdin: a DSN
                                      on the command line shows its password to ps and shell history

Without --admin it uses the same configuration (file and environment) as
'pgtenant serve' and works on the catalog and provider directly. With
--admin URL it asks a running router's admin API instead; the token comes
from --token or PGTENANT_ADMIN_TOKEN. Routers that cached the tenant's
route keep it until cache.ttl ends.
`

// tenantsFlags are the flags of every tenants verb.
type tenantsFlags struct {
	fs                    *pflag.FlagSet
	path, after, adminURL *string
	token                 *string
	limit                 *int
	yes                   *bool
	passwd                passwdFlags
	dsn                   *string
	dsnStdin              *bool
}

// newTenantsFlags defines them on a new flag set whose usage is the verbs
// (tenantsUsage) and then the flags.
func newTenantsFlags(name string, stderr io.Writer) *tenantsFlags {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &tenantsFlags{fs: fs}
	f.path = fs.String("config", "", "YAML config file, as for serve")
	f.after = fs.String("after", "", "list: start after this tenant ID")
	f.limit = fs.Int("limit", 100, "list: at most this many tenants")
	f.yes = fs.Bool("yes", false, "delete: confirm")
	f.passwd.stdin = fs.Bool("password-stdin", false, "passwd: read the password from standard input (its first line)")
	f.passwd.verifier = fs.String("verifier", "", "passwd: store this SCRAM-SHA-256 verifier (SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>)")
	f.passwd.delete = fs.Bool("delete", false, "passwd: remove the tenant's own secret; route: remove the registered route")
	f.dsn = fs.String("dsn", "", "route: the tenant's DSN (libpq URL or keyword form; its sslmode is the route's upstream TLS)")
	f.dsnStdin = fs.Bool("dsn-stdin", false, "route: read the DSN from standard input (its first line)")
	f.adminURL = fs.String("admin", "", "URL of a router's admin listener, e.g. http://127.0.0.1:9090 (instead of --config)")
	f.token = fs.String("token", "", "admin API token (prefer "+router.EnvAdminToken+")")
	fs.Usage = func() { fmt.Fprint(stderr, tenantsUsage, "\nFlags:\n", fs.FlagUsages()) }
	return f
}

// runTenants is the admin side of the catalog and provider.
func runTenants(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		newTenantsFlags("pgtenant tenants", stderr).fs.Usage()
		if len(args) == 0 {
			return errUsage
		}
		return pflag.ErrHelp
	}
	verb := args[0]
	f := newTenantsFlags("pgtenant tenants "+verb, stderr)
	fs := f.fs
	path, after, limit, yes, adminURL, token := f.path, f.after, f.limit, f.yes, f.adminURL, f.token
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var tenant, mode string
	switch verb {
	case "list":
		if fs.NArg() != 0 {
			return fmt.Errorf("%w: tenants list takes no arguments", errUsage)
		}
	case "show", "delete", "warm", "evict", "block", "unblock", "passwd":
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: tenants %s takes one tenant ID", errUsage, verb)
		}
		tenant = fs.Arg(0)
	case "route":
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: tenants route takes one tenant ID", errUsage)
		}
		tenant = fs.Arg(0)
	case "place":
		if fs.NArg() != 2 {
			return fmt.Errorf("%w: tenants place takes a tenant ID and a provider (or default)", errUsage)
		}
		tenant, mode = fs.Arg(0), fs.Arg(1)
	case "pool-mode":
		if fs.NArg() != 2 {
			return fmt.Errorf("%w: tenants pool-mode takes a tenant ID and a mode (session, transaction, off or default)", errUsage)
		}
		tenant, mode = fs.Arg(0), fs.Arg(1)
		switch mode {
		case "session", "transaction", "off", "default":
		default:
			return fmt.Errorf("%w: pool mode %q: want session, transaction, off or default", errUsage, mode)
		}
	default:
		fs.Usage()
		return fmt.Errorf("%w: unknown tenants command %q", errUsage, verb)
	}
	if verb == "delete" && !*yes {
		return fmt.Errorf("deleting tenant %q destroys its database and data: add --yes to confirm", tenant)
	}
	var verifier string // passwd's; "" deletes
	if verb == "passwd" {
		pf := f.passwd
		n := 0
		for _, set := range []bool{*pf.stdin, *pf.verifier != "", *pf.delete} {
			if set {
				n++
			}
		}
		if n > 1 {
			return fmt.Errorf("%w: tenants passwd takes one of --password-stdin, --verifier and --delete", errUsage)
		}
		if !*pf.delete {
			var err error
			if verifier, err = passwdVerifier(pf, tenant, os.Stdin, stderr); err != nil { // passwd.go
				return err
			}
		}
	}
	var dsn string // route's; "" deletes
	if verb == "route" {
		var err error
		if dsn, err = routeDSN(f, os.Stdin); err != nil { // route.go
			return err
		}
	}
	if *adminURL != "" { // tenants_api.go
		if verb == "route" || verb == "place" {
			return placeAPI(ctx, stdout, apiClient{base: *adminURL, token: cmp.Or(*token, os.Getenv(router.EnvAdminToken))}, verb, tenant, mode, dsn) // route.go
		}
		if verb == "passwd" {
			return passwdAPI(ctx, stdout, apiClient{base: *adminURL, token: cmp.Or(*token, os.Getenv(router.EnvAdminToken))}, tenant, verifier)
		}
		return runTenantsAPI(ctx, stdout, apiClient{base: *adminURL, token: cmp.Or(*token, os.Getenv(router.EnvAdminToken))}, verb, tenant, mode, *after, *limit)
	}
	switch verb {
	case "warm", "evict", "block", "unblock", "pool-mode":
		return fmt.Errorf("%w: tenants %s acts on a running router: give its admin listener with --admin URL", errUsage, verb)
	}

	fc, err := router.LoadConfig(*path)
	if err != nil {
		return err
	}
	if fc.Auth.Password == "" && fc.Auth.SCRAMVerifier == "" {
		fc.Auth.Password = "unused" // the admin side serves no clients
	}
	if err := fc.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log, _, err := router.NewLogger(stderr, fc.Log.Format, "warn")
	if err != nil {
		return err
	}
	a, err := openAdmin(ctx, fc, log)
	if err != nil {
		return err
	}
	defer a.close()

	switch verb {
	case "list":
		return a.list(ctx, stdout, *after, *limit)
	case "show":
		return a.show(ctx, stdout, tenant)
	case "passwd":
		return passwdCatalog(ctx, stdout, a.cat, fc.Auth.PerTenant, tenant, verifier)
	case "place", "route":
		return placeCatalog(ctx, stdout, a.cat, fc, verb, tenant, mode, dsn) // route.go
	}
	return a.delete(ctx, stdout, tenant)
}

// admin is the catalog plus the provider, without a router.
type admin struct {
	cat   *catalog.Catalog
	parts *router.Upstream
	close func()
}

func openAdmin(ctx context.Context, fc router.Config, log *slog.Logger) (*admin, error) {
	key, err := catalog.ParseKey(fc.Catalog.Key)
	if err != nil {
		return nil, fmt.Errorf("catalog.key (%s): %w", router.EnvCatalogKey, err)
	}
	parts, err := router.BuildUpstream(ctx, fc, log, false)
	if err != nil {
		return nil, err
	}
	catDSN := fc.Catalog.DSN
	if catDSN == "" {
		catDSN = parts.CatalogDSN
	}
	pool, err := router.OpenPool(ctx, "catalog.dsn", catDSN, 2)
	if err != nil {
		parts.Close()
		return nil, err
	}
	cat, err := router.OpenCatalog(ctx, pool, key)
	if err != nil {
		pool.Close()
		parts.Close()
		return nil, err
	}
	return &admin{cat: cat, parts: parts, close: func() { pool.Close(); parts.Close() }}, nil
}

func (a *admin) list(ctx context.Context, w io.Writer, after string, limit int) error {
	entries, err := a.cat.List(ctx, after, limit)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tPROVIDER\tPROVIDER ID\tUPSTREAM\tDATABASE\tUSER\tSTATE\tCREATED")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\n", e.Tenant, e.Provider, e.ProviderID, e.Host, e.Port,
			e.Database, e.User, e.State, e.CreatedAt.UTC().Format("2006-01-02 15:04:05"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(entries) == limit && limit > 0 {
		fmt.Fprintf(w, "(more: --after %s)\n", entries[len(entries)-1].Tenant)
	}
	return nil
}

func (a *admin) show(ctx context.Context, w io.Writer, tenant string) error {
	ep, ok, err := a.cat.Lookup(ctx, tenant)
	if err != nil {
		return err
	}
	found := ok
	if ok {
		fmt.Fprintf(w, "tenant       %s\nupstream     %s\nprovider id  %s\n", tenant, ep.String(), ep.ProviderID)
	} else {
		fmt.Fprintf(w, "tenant %s: not in the catalog\n", tenant)
	}
	if np, isNeon := a.parts.Provider.(*neon.Provider); isNeon {
		t, ok, err := np.Lookup(ctx, tenant)
		if err != nil {
			return err
		}
		if ok {
			found = true
			fmt.Fprintf(w, "neon         %s: project %s, branch %s, endpoint %s (%s)\n", t.Name, t.ProjectID, t.BranchID, t.EndpointID, t.Host)
		} else {
			fmt.Fprintln(w, "neon         no branch or project by that name")
		}
	}
	if !found {
		return fmt.Errorf("tenant %q: %w", tenant, provision.ErrTenantNotFound)
	}
	return nil
}

// delete deletes the tenant in the one order admin.DeleteTenant keeps,
// at the provider the catalog records for it.
func (a *admin) delete(ctx context.Context, w io.Writer, tenant string) error {
	prov := a.parts.Provider
	if ep, ok, err := a.cat.Lookup(ctx, tenant); err != nil {
		return err
	} else if ok && ep.Provider != "" && ep.Provider != prov.Name() {
		if prov = a.parts.Providers()[ep.Provider]; prov == nil {
			return fmt.Errorf("tenant %q lives on provider %s, which this configuration does not have: add it to provider.also", tenant, ep.Provider)
		}
	}
	d, err := adminapi.DeleteTenant(ctx, prov, a.cat, tenant)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "tenant %s deleted (provider %s: %s; catalog: %s)\n", tenant, prov.Name(),
		done(d.Provider), done(d.Catalog))
	return nil
}

func done(deleted bool) string {
	if !deleted {
		return "nothing there"
	}
	return "deleted"
}
