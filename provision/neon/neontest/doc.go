// Package neontest is an in-process fake of the Neon API v2, backed by
// real Postgres, for the Neon provider's tests, end-to-end router tests and
// `pgtenant dev --provider neon-fake`. It follows docs/neon-api.md in the
// repository (§0-§8, and the checklist in §11).
//
// A Server has two listeners:
//
//   - the API (URL(), ".../api/v2"): bearer auth, JSON everywhere (errors
//     are {"code","message","request_id"}), projects, branches, endpoints,
//     roles, databases, connection URIs, passwords and operations, with
//     Neon's id shapes, status codes and asynchronous operations: each
//     project has an operation queue, and mutating calls answer 423 while
//     any of its operations is unfinished;
//   - a compute proxy (PGAddr()), the fake's version of Neon's proxy: TLS
//     with a certificate for *.c-2.<region>.aws.neon.tech (and
//     *.<region>.aws.neon.tech) signed by a CA made at start (CAPool,
//     CACertPEM), routing by SNI (or options=endpoint=<id>), SCRAM-SHA-256
//     and SCRAM-SHA-256-PLUS (channel_binding=require works) against the
//     role's Neon password, then a relay to the branch's real database.
//     An endpoint's direct host (<ep>.c-2...) and its pooled twin
//     (<ep>-pooler.c-2...) lead to the same database; only the pooled one
//     checks the startup parameters as the pooler does, so migrations and
//     other session work can be tested on the direct host.
//
// Use it like this (tests: pgtest.Shared(t).AdminDSN("postgres")):
//
//	be, err := neontest.NewBackend(ctx, adminDSN) // template database, admin pool
//	srv, err := neontest.NewServer(ctx, neontest.Config{Backend: be, OpDelay: 20 * time.Millisecond})
//	defer be.Close()
//	defer srv.Close()
//	// HTTP clients: srv.URL(), "Authorization: Bearer <anything>".
//	// Postgres clients: the endpoint host from the API, and
//	cfg.DialFunc, cfg.LookupFunc = srv.Dialer(), srv.LookupFunc()
//	cfg.TLSConfig = srv.ClientTLSConfig(host) // sslmode=verify-full
//
// # Real Postgres behind branches
//
// With a Backend, every branch is real: a project's default branch gets a
// database cloned from a template database (empty, or built from
// BackendConfig.TemplateSQL), and each new branch gets CREATE DATABASE ...
// TEMPLATE <parent's database>, so it starts with the parent's data.
// Roles are cluster-wide in Postgres but per branch in Neon, so a branch's
// role R and database D are "<branch id>__R" and "<branch id>__D" in the
// cluster (hashed if longer than 63 bytes). Branch roles may connect only
// to their own branch's databases, and a database's owner role owns its
// contents (REASSIGN OWNED after cloning). Clients never see the local
// names: the proxy authenticates them with the Neon password, logs in with
// an internal one, rewrites local names in login errors and in
// session_authorization. (SELECT current_user does show the local name.)
//
// # Faults
//
// FailNext (429, 503, 500, 423, 524 ...), DropAfterCreate (the create
// happens, the answer is lost), FailNextOperation (an operation ends
// "failed"), and Requests (the request log) let tests check a client's
// retries and idempotency.
//
// # Simplifications
//
// Operations take OpDelay (or as long as their Postgres work takes) and
// run one at a time per project. Waking an idle endpoint (scale to zero is
// applied lazily after suspend_timeout_seconds without sessions; 0 means
// 300s) creates no start_compute operation. Point-in-time and schema-only
// branching, endpoint/role/database creation calls, PATCH calls, rate
// limiting and the "pooler" behaviour beyond its startup-parameter check
// (transaction pooling) are not faked. Branching from a database with open
// sessions waits up to 1s, then terminates them (CREATE DATABASE needs an
// idle source). State lives in memory: Close drops every database and role
// the server created.
package neontest
