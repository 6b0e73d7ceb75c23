// Package catalog owns the persistent state shared by all router instances
// in one Postgres control database: schema pgtenant, its table definitions
// and their migration. Today that is the tenant table (pgtenant.tenants:
// each tenant's upstream endpoint, see Catalog.Lookup, Catalog.Ensure,
// Catalog.Delete and Catalog.List), the block list (pgtenant.blocked, see
// Catalog.Block), the per-tenant pool modes (pgtenant.pool_modes, see
// Catalog.SetPoolMode), the instance registry (pgtenant.instances: the
// router instances sharing the catalog, their peer addresses and
// heartbeats, see Catalog.Register), the tenants' own secrets as SCRAM
// verifiers (pgtenant.credentials, see Catalog.SetCredential), the schema
// migrations of the tenant databases (pgtenant.migrations and
// pgtenant.migration_state, see Catalog.RegisterMigrations and
// Catalog.LockMigration; package migrate runs them) and the key check
// (pgtenant.meta).
//
// Open creates the schema if it is missing; several instances may open one
// catalog at once, since the DDL runs under an advisory lock. Creating and
// deleting a tenant take a per-tenant advisory lock, so N instances sharing
// one catalog create a tenant once.
//
// Upstream passwords are stored encrypted with AES-256-GCM under a key the
// router gets from its environment (see ParseKey and NewKey). The tenant ID
// is the additional authenticated data, so ciphertexts cannot be moved
// between rows, and Open refuses a key that does not match the one the
// catalog was first written with (ErrKeyMismatch).
//
// A *Catalog is the store a resolver.Resolver reads and fills (it
// implements resolver.Store); catalog does not import resolver, so the
// resolver's cache can be tested without Postgres.
package catalog
