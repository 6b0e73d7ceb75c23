// Package testbed is the test bed of `pgtenant bench --self`: it starts,
// in a temporary directory, a throwaway Postgres, PgBouncer in session and
// transaction pool mode and routers (`pgtenant serve` child processes),
// all through internal/localproc, creates the tenants, and runs the
// benchmark against them (Start, Bed.Run, Bed.Close). cmd/pgtenant keeps
// only the flags and the printing. It is internal because it is benchmark
// tooling, not part of the router's public surface.
package testbed
