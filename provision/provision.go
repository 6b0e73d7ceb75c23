package provision

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// ErrTenantNotFound is returned by Provider.Delete (and by lookups) when the
// provider holds nothing for the tenant.
var ErrTenantNotFound = errors.New("provision: tenant not found")

// Endpoint is where a tenant's database lives and how the router logs in to
// it. It holds a secret (Password): never log it with %v; its String and
// LogValue methods mask the password.
type Endpoint struct {
	// Host is a DNS name or IP address of the upstream Postgres (or pooler).
	Host string
	// Port is the upstream's TCP port.
	Port uint16
	// Database is the database name to connect to.
	Database string
	// User is the tenant's own login role.
	User string
	// Password is User's password. Secret.
	Password string
	// ProviderID names the tenant's resources at the provider (for local:
	// the database name; for Neon: a branch or project id).
	ProviderID string
	// Provider is the name of the provider that holds the endpoint (the
	// catalog's provider column). Providers leave it empty; the resolver
	// fills it in. The proxy picks that provider's upstream settings by it,
	// when several providers are configured.
	Provider string
	// TLS, when not empty, is the upstream TLS mode for this endpoint
	// alone, overriding its provider's ("disable", "require" or
	// "verify-full"): a static route's sslmode.
	TLS string
}

// Addr returns host:port.
func (e Endpoint) Addr() string {
	return net.JoinHostPort(e.Host, strconv.Itoa(int(e.Port)))
}

// String describes the endpoint without its password.
func (e Endpoint) String() string {
	return "postgres://" + e.User + ":xxxxx@" + e.Addr() + "/" + e.Database
}

// LogValue implements slog.LogValuer and leaves the password out.
func (e Endpoint) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("addr", e.Addr()),
		slog.String("database", e.Database),
		slog.String("user", e.User),
	)
}

// Provider creates and deletes tenants' databases. It is a plugin contract
// (like database/sql/driver) with one implementation per backend.
// Implementations must be safe for concurrent use.
type Provider interface {
	// Name is a short identifier stored in the catalog ("local", "neon", ...).
	Name() string
	// Create makes the tenant's database, or adopts it if it already exists
	// (for example after a crash between creating it and recording it), and
	// returns an endpoint with working credentials. It must be idempotent:
	// calling it twice for one tenant never creates two databases.
	Create(ctx context.Context, tenant string) (Endpoint, error)
	// Delete removes the tenant's database and role. It returns
	// ErrTenantNotFound if there is nothing to delete.
	Delete(ctx context.Context, tenant string) error
}

// Estimator is implemented by providers whose Create takes minutes (a
// cloud instance or cluster per tenant). The router does not keep a client
// waiting that long: it starts the creation in the background under its
// own budget and answers the client's connects with 57P03 ("being created,
// about N minutes, retry") until the tenant is ready.
type Estimator interface {
	// CreateEstimate is how long a typical Create takes.
	CreateEstimate() time.Duration
}

// SessionRouter is implemented by providers whose routes go through a
// transaction-mode pooler (Neon's -pooler host, Supabase's pooler port
// 6543). Migrations need a whole session (SET, advisory locks, DDL in a
// transaction), which such a pooler does not keep; SessionEndpoint returns
// where the same database, as the same user, keeps one.
type SessionRouter interface {
	SessionEndpoint(ep Endpoint) Endpoint
}
