// Package neon implements provision.Provider over the Neon API v2
// (https://console.neon.tech/api/v2). Facts about the API are summarised in
// docs/neon-api.md in the repository, whose sections (§N) the code cites.
//
// Two modes:
//
//   - ModeBranch: each tenant is a branch named Prefix+tenant ("tenant-acme")
//     with one read_write endpoint, branched from a template branch. Branches
//     are spread over Config.Projects in order: a project that Neon refuses
//     with 422 BRANCHES_LIMIT_EXCEEDED, or that reaches its MaxBranches, is
//     skipped and the next one is used. Endpoint.ProviderID is
//     "<project_id>/<branch_id>".
//   - ModeProject: each tenant is a project of its own named Prefix+tenant,
//     Neon's recommended isolation. Endpoint.ProviderID is "<project_id>".
//
// Routes always use the endpoint's pooled host ("<endpoint-id>-pooler.<rest>",
// Neon's transaction-mode PgBouncer), port 5432; a client that needs the
// direct host asks the proxy for it (options '-c pgtenant.endpoint=direct'),
// which drops the -pooler suffix itself. Neon requires TLS and picks
// the endpoint from SNI, so the router must dial with sslmode verify-full and
// the route's host as server name.
//
//	p, err := neon.New(neon.Config{
//		APIKey:   os.Getenv("NEON_API_KEY"),
//		Mode:     neon.ModeBranch,
//		Projects: []neon.BranchProject{{ID: "sparkling-hill-99143322", ParentBranchID: "br-template-a1b2c3d4"}},
//	})
//	ep, err := p.Create(ctx, "acme") // idempotent; store ep in the catalog
//
// Create is idempotent by name. It first looks the tenant up (listing
// branches or projects with search= and matching the name exactly) and
// adopts what it finds; a create answered 409 is adopted too, and a create
// whose answer was lost (transport error, timeout, 5xx) is never re-sent
// blindly: the tenant is looked up again and adopted if it landed. After a
// create it polls the operations Neon started until they finish, so the
// returned endpoint is ready to connect to.
//
// Every request goes through one client-side limiter shared by all tenants
// (Config.RequestsPerMinute overall, Config.RoutePerSecond per route; callers
// wait rather than fail), and 423 Locked, 429 and 503 answers are retried
// with exponential backoff and full jitter within Config.RetryBudget. Other
// 4xx answers are returned at once as *APIError.
//
// A create whose operation fails is rolled back (the branch or project is
// deleted) and reported as an *OperationError, so that the next Create
// starts afresh. Lookup finds a tenant without changing anything; Delete
// removes it and reports provision.ErrTenantNotFound when there is none.
//
// Branches inherit their parent's role passwords (Neon copies them), so in
// branch mode every tenant shares the template role's password unless
// Config.UniquePasswords resets it per tenant (one more call and operation
// wait per new tenant). The router is the only holder of these passwords,
// and each tenant's endpoint only serves its own branch, but a leaked
// shared password would open every tenant whose host is known.
//
// Schema migrations (package migrate) run over an endpoint's direct host
// (DirectHost), never the pooler, and in branch mode start with the
// template branches (TemplateBranches, TemplateRoute), so that branches
// created afterwards are born current. Project mode has no template: a new
// tenant project starts empty.
//
// The API key and tenants' passwords never appear in errors or logs.
package neon
