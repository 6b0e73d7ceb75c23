// Package admin is the router's HTTP admin surface: the handlers behind the
// admin listener (cmd/pgtenant wires them to the real catalog, resolver,
// provider and proxy).
//
// Unauthenticated, for probes and scrapers:
//
//	GET /metrics   Prometheus metrics of the registry it is given
//	GET /healthz   200 while the process is alive
//	GET /readyz    200 when the catalog answers a ping and the proxy is not draining; 503 otherwise
//
// Under /v1/, guarded by "Authorization: Bearer <token>" (401 otherwise; no
// token configured: /v1 is off), JSON in and out, errors as {"error": "..."}:
//
//	GET    /v1/tenants?after=&limit=          catalog rows, paged, without secrets
//	GET    /v1/tenants/{id}                   route (no password), cached here?, blocked?, pool mode, own secret?, live sessions here
//	POST   /v1/tenants/{id}/warm              resolve now: creates the tenant ahead of its first connect
//	POST   /v1/tenants/{id}/evict             forget the cached route on this router
//	POST   /v1/tenants/{id}/block             persist in the block list, apply here, end live sessions here
//	POST   /v1/tenants/{id}/unblock           remove from the block list, apply here
//	PUT    /v1/tenants/{id}/pool-mode         {"mode": "session"|"transaction"|"off"|""}: the tenant's own pool mode, persisted, applied here
//	DELETE /v1/tenants/{id}/pool-mode         clear it: the router's default applies again
//	PUT    /v1/tenants/{id}/password          {"password": "..."} or {"verifier": "SCRAM-SHA-256$..."}: the tenant's own secret (auth.per_tenant), stored as a verifier, applied here
//	DELETE /v1/tenants/{id}/password          remove it
//	DELETE /v1/tenants/{id}?confirm={id}      end live sessions, delete at the provider the catalog records, then in the catalog
//	GET    /v1/tenants/{id}/placement         the provider that creates (or created) the tenant: {"provider", "placed"}
//	PUT    /v1/tenants/{id}/placement         {"provider": "rds"}: create the tenant there (provider.kind or one of provider.also); 409 once it exists elsewhere
//	DELETE /v1/tenants/{id}/placement         remove the placement: the default provider creates it
//	PUT    /v1/tenants/{id}/route             {"dsn": "..."} or {"host", "port", "database", "user", "password", "sslmode"}: a static route to an existing database, password encrypted in the catalog
//	DELETE /v1/tenants/{id}/route             remove the registered route (ends live sessions here)
//	GET    /v1/pools                          pooling on this router: mode, each pool (route), each upstream's budget
//	POST   /v1/migrations                     {"action": "up", "to", "concurrency", "canary", "tenants", "max_fail_share", "dry_run"}: 202, the run starts in the background; 409 while one runs here
//	GET    /v1/migrations                     the run started here (progress, then report) and the fleet's versions; POST {"action": "status"} too
//
// The block list and the per-tenant pool modes live in the shared catalog;
// other router instances apply them when they refresh them (the router
// package does, periodically).
package admin
