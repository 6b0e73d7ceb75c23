// Package proxy is the client-facing half of pgtenant: it accepts Postgres
// wire-protocol connections, answers the startup negotiation (SSLRequest,
// GSSENCRequest, CancelRequest, StartupMessage 3.x; TLS is terminated when
// configured, also PostgreSQL 17's direct TLS), extracts and validates
// the tenant ID, authenticates the client itself (SCRAM-SHA-256, with the
// app secret or, with Auth.PerTenant, the tenant's own secret: tenantauth.go), resolves
// the tenant to an upstream through a Resolver, logs in upstream with the
// tenant's own credentials (login.go: its own startup exchange, so the SCRAM
// keys derived for a role are reused by its later logins), relays the session
// parameters, hands the client its own cancel key and then pumps bytes both
// ways until either side hangs up.
//
// Every failure a client can cause or meet reaches it as an ErrorResponse
// with a SQLSTATE (see ClientError); the connection is then closed.
//
// The tenant may be named in the user name, the options parameter, the TLS
// server name or the database name (TenantConfig.Carriers, carriers.go).
// Limits (limits.go, changeable at runtime with SetLimits) cap handshakes,
// authenticated connections (per router and per tenant, taken only after
// authentication), throttle failed logins per (address, tenant) and end
// idle sessions (idle.go); SetBlocked refuses tenants and ends their
// sessions.
//
// With PoolConfig a client shares pooled server connections (pooling.go,
// pooled.go) in the mode its options name (pgtenant.pool_mode), else its
// tenant's (SetTenantPoolModes), else the router's. options
// '-c pgtenant.endpoint=direct' asks for a connection of the client's own
// to the route's host without Neon's -pooler suffix.
package proxy
