// Package local is pgtenant's embedded default provider: tenants live on one
// PostgreSQL server (13+; 15+ for Config.Strategy) that the router
// administers through a pool logged in as a superuser or as a role with
// CREATEDB and CREATEROLE.
//
// Each tenant gets a database cloned from a template database with
// CREATE DATABASE ... TEMPLATE, the local analogue of a Neon branch created
// from a template branch, and a login role of the same name ("t_" + tenant by
// default) with a random password. The role owns the database and every
// object the template's setup SQL created, so the application can use and
// migrate its schema; CONNECT is revoked from PUBLIC, so no other tenant can
// connect to it. With Config.Naming "hashed" the name is the prefix and a
// keyed hash of the tenant ID instead, so the names every role can read in
// pg_database, pg_roles and pg_stat_activity say nothing about other
// tenants' IDs. Only SCRAM-SHA-256 verifiers computed in this process are
// sent to the server: passwords never appear in SQL, server logs or errors.
//
//	p := local.New(local.Config{Host: "db.internal", Port: 5432}, admin)
//	_, err := p.EnsureTemplate(ctx, schemaSQL) // once, at start-up
//	ep, err := p.Create(ctx, "acme")           // idempotent; store ep in the catalog
//
// Create and Delete are idempotent and safe to call concurrently, also from
// several router instances (they serialise per tenant with advisory locks),
// so the catalog can heal a crash between creating a tenant and recording it
// by calling Create again.
//
// Tenants' roles can still connect to databases whose CONNECT privilege is
// granted to PUBLIC, such as "postgres" by default; an operator who wants
// them kept out revokes it there.
//
// The package also manages a local cluster for `pgtenant dev` and tests
// (StartCluster): initdb into a directory, a free port on 127.0.0.1, SCRAM
// logins only, stopped with the process.
package local
