// Package provision defines the contract between the router and the systems
// that create tenants' databases (providers): a local Postgres server, the
// Neon API, or a static table of routes.
//
// A Provider turns a validated tenant ID into an Endpoint: where the tenant's
// database lives and the credentials the router uses to log in to it. The
// package does no I/O of its own; implementations live in subpackages.
package provision
