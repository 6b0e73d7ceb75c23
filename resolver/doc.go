// Package resolver turns a validated tenant ID into a Route: the upstream
// Postgres endpoint and credentials the proxy dials for that tenant.
//
// A Resolver answers in three tiers:
//
//  1. An in-process LRU (golang-lru/v2 simplelru, capped by Config.CacheSize)
//     whose entries live for Config.TTL. A hit takes one mutex and allocates
//     nothing. Failed fills are remembered for Config.NegativeTTL so that a
//     broken provider or catalog is not hammered by reconnecting clients.
//  2. On a miss, one fill per tenant runs at a time in this process
//     (golang.org/x/sync/singleflight). A fill has its own budget
//     (Config.FillTimeout) detached from the callers' contexts: a caller that
//     gives up returns ctx.Err() at once, while the fill keeps going for the
//     callers still waiting.
//  3. The fill asks the Store, in production a *catalog.Catalog: a table in
//     a Postgres control database that every router instance shares. If the
//     tenant is not there, the catalog takes a per-tenant advisory lock,
//     looks again, and only then calls the Provisioner and records the new
//     endpoint. N router instances sharing one catalog therefore create a
//     tenant once.
//
// The storage itself (tables, encryption of passwords, keys, locks) is
// package catalog's; resolver only knows the Store interface, so it does not
// import catalog.
//
// Config.MaxConcurrentCreates caps the creations running at once; fills of
// missing tenants over it wait for a slot within their FillTimeout.
//
// A provider that implements provision.Estimator takes minutes per
// creation. Its creations run in the background (background.go), detached
// from clients under Config.CreateBudget, claimed in the store
// (CreationStore) so that one instance creates while the others answer
// ErrCreating; a connect waits at most Config.CreateWait for one.
//
// Errors from Resolve wrap ErrProvision when the provider failed (the proxy
// answers 57P03, "retry later"; ErrCreateFailed among them),
// ErrCreating (a *CreatingError) while the tenant is created in the
// background, ErrCatalog when the catalog could not be read
// or written, and ErrUnknownTenant when provisioning is disabled and the
// catalog has no such tenant. No error string contains a password.
package resolver
