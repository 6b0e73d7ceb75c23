// Package rds implements provision.Provider on Amazon RDS, in two kinds:
//
//   - aurora: an Aurora PostgreSQL cluster per tenant with one Aurora
//     Serverless v2 writer (db.serverless), its capacity range and
//     auto-pause configurable (min 0 ACUs pauses idle tenants);
//   - rds: an RDS for PostgreSQL DB instance per tenant (class, storage,
//     engine version).
//
// Identifiers are derived from the tenant (Identifier) and every resource
// is tagged pgtenant:tenant=<tenant>; the master password is an HMAC of
// the tenant under a configured key. Together they make Create idempotent
// without local state: a create whose answer was lost, or that a crashed
// router left behind, is found by its identifier (AlreadyExists), checked
// by its tag and adopted with the same password. The router logs in as
// the master user to the database Config.Database made at creation: each
// tenant owns its whole cluster or instance, so no per-tenant role is
// needed.
//
// Creation takes minutes (docs/aws-rds-api.md §7), so Provider implements
// provision.Estimator: the router creates in the background and tells
// clients to retry (57P03) meanwhile. API calls go through the AWS SDK for
// Go v2 with its retries off; this package retries throttling and lost
// answers itself under a budget, and polls statuses with backoff.
// Endpoints are reached with TLS verify-full against the RDS CA bundle
// (global-bundle.pem, upstream.ca_file or the provider's ca_file).
//
// Package rdstest is a fake of the API backed by a local Postgres.
package rds
