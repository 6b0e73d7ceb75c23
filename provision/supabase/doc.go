// Package supabase implements provision.Provider with the Supabase
// Management API: one Supabase project per tenant, named
// <NamePrefix><tenant>, reached through the project's shared pooler
// (Supavisor) as postgres.<ref> or through its direct host. The facts it
// relies on are in docs/supabase-api.md; comments cite its sections.
//
// Create finds the tenant's project by name before making one, so a
// create whose answer was lost, or a crash between creating and recording
// a tenant, never leads to a second project. It generates the database
// password itself; a project it adopts without knowing the password gets
// a new one through the API (§9). Creating a project takes a minute or
// two, so the Provider is a provision.Estimator.
//
// The client keeps under Supabase's rate limit of 120 requests per minute
// per scope (§8), retries 429 answers after Retry-After or
// X-RateLimit-Reset, and retries 5xx and transport errors only for calls
// that are harmless to repeat.
//
// provision/supabase/supabasetest is a fake of the API and of the pooler,
// backed by real local Postgres, for tests and `pgtenant dev --provider
// supabase-fake`.
package supabase
