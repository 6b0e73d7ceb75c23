// Package supabasetest is an in-process fake of the Supabase Management
// API and of the shared pooler, backed by real Postgres, for the supabase
// provider's tests, the conformance suite and `pgtenant dev --provider
// supabase-fake`. It follows docs/supabase-api.md.
//
// A Server has two listeners on 127.0.0.1:
//
//   - the API (URL()): Bearer auth (401 without the token), the calls of
//     §2 with the project object of §3, projects that stay COMING_UP for
//     Config.CreateDelay and then turn ACTIVE_HEALTHY (§4), duplicate names
//     accepted (§9), and the rate limit of §8 (Config.RateLimit requests
//     per minute per scope, 429 with X-RateLimit-* headers);
//   - a pooler (PoolerAddr()), standing in for Supavisor and for the
//     projects' direct hosts (§6): TLS with a certificate for
//     *.pooler.supabase.com and *.supabase.co signed by a CA made at start
//     (CAPool, CACertPEM). On a pooler host it finds the project from the
//     user name postgres.<ref>; on db.<ref>.supabase.co from the host, with
//     user postgres. It then relays the session to the project's real
//     database, where Postgres itself checks the password (SCRAM).
//
// Every project is a database and a login role, both named sb_<ref>, on
// the local Postgres server given by Config.AdminDSN. The pooler rewrites
// the startup packet's user and database to them, so login error messages
// and current_user show the local role name.
//
// Faults: FailNext (the next calls answer a status), LoseNextCreate (the
// next create of a name happens, then the connection is dropped without an
// answer), and Calls (a count per call) let tests check the client's
// retries and idempotency.
//
// Simplifications: no paging, no pause/restore, no per-service health,
// transaction and session mode behave alike (no pooling), cancel requests
// are not forwarded. State lives in memory; Close drops every database and
// role the server made.
package supabasetest
