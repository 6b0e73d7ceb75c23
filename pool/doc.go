// Package pool keeps logged-in upstream server connections for reuse, per
// route (tenant, server, database, role), under one budget per upstream
// server that all tenants on it share fairly.
//
// A Manager owns the pools. Acquire hands out a *Conn: an idle server
// connection of the route's pool (most recently used first), or a new one
// made by the caller's DialFunc when the server's budget
// (Config.MaxServerConnections) and the tenant's ceiling (MaxPerTenant)
// allow. When they don't, the caller queues. Freed capacity goes to the
// tenants with waiters in round-robin order, first-come first-served within
// a tenant, so one tenant with hundreds of waiting clients cannot starve a
// tenant with one; a tenant below its floor (MinPerTenant) is served first.
// Idle connections of other routes are closed to make room for a waiter.
// A wait ends after Config.QueueTimeout with a *BudgetError naming the
// budget.
//
// The caller gives a connection back with Release, saying whether it is
// clean; a dirty one is closed, or first reset (ROLLBACK and a reset query
// such as DISCARD ALL, see Server.Reset) with ResetRelease. Tracker follows
// the server's byte stream to the client and reports the transaction status
// of each ReadyForQuery, which is where transaction pooling releases.
//
// One janitor goroutine per Manager closes connections idle for
// Config.IdleTimeout (or older than MaxLifetime) and removes pools that
// have had nothing open for IdleTimeout. Close stops it.
//
// The package does no logging and exports plain numbers (Stats, Counters);
// the caller turns them into metrics and API responses.
package pool
