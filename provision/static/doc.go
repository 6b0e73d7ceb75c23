// Package static is the provider for databases that already exist (a
// self-hosted server, RDS, Aurora, Supabase): it creates nothing, it only
// finds a tenant's route. Three sources are checked, in this order:
//
//  1. Config.Routes, a map from tenant ID to a DSN (libpq URL or keyword
//     form);
//  2. Config.Template, a DSN in which {tenant} stands for the tenant ID,
//     when it is set;
//  3. the Store: routes registered at run time (the admin API's
//     PUT /v1/tenants/{id}/route), kept in the catalog.
//
// A tenant none of them knows gets ErrNoRoute from Create. A DSN's sslmode
// becomes the route's own upstream TLS mode (provision.Endpoint.TLS):
// disable, require or verify-full; verify-ca is refused (the router has no
// such mode); with no sslmode (or allow/prefer, which fall back to
// plaintext) the mode is disable toward a loopback host and require toward
// any other, as for the local provider. A password may come from the
// environment: ${NAME} in place of the DSN's password, or
// Config.PasswordEnv for the template, so that the file holds no secret.
//
//	p, err := static.New(static.Config{
//		Routes:   map[string]string{"acme": "postgres://acme@db1:5432/acme?sslmode=verify-full"},
//		Template: "postgres://{tenant}_app@db-{tenant}.internal:5432/{tenant}",
//		PasswordEnv: "TENANT_DB_PASSWORD",
//	})
//	ep, err := p.Create(ctx, "acme") // finds; never creates
package static
