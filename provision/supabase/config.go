package supabase

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Endpoint kinds: how the router reaches a tenant's project (§6).
const (
	// EndpointPooler routes through the project's shared pooler
	// (Supavisor) as postgres.<ref>; it works over IPv4.
	EndpointPooler = "pooler"
	// EndpointDirect routes to db.<ref>.supabase.co as postgres; it needs
	// IPv6 or the IPv4 add-on.
	EndpointDirect = "direct"
)

// Pooler modes (§6): the pooler port the route uses.
const (
	PoolerTransaction = "transaction"
	PoolerSession     = "session"
)

// Defaults for the zero Config.
const (
	DefaultAPIURL            = "https://api.supabase.com"
	DefaultNamePrefix        = "tenant-"
	DefaultRequestsPerMinute = 120 // per scope (docs/supabase-api.md §8)
	DefaultTransactionPort   = 6543
	DefaultSessionPort       = 5432
	DefaultDirectPort        = 5432
	DefaultRetryBudget       = 2 * time.Minute
	DefaultRetryDelay        = 500 * time.Millisecond
	DefaultPollInterval      = 2 * time.Second
	DefaultCreateTimeout     = 10 * time.Minute
	DefaultCreateEstimate    = 2 * time.Minute
	DefaultHTTPTimeout       = 30 * time.Second
	// DefaultLostWait is how long Create keeps looking for the project of
	// a create whose answer was lost.
	DefaultLostWait = 30 * time.Second
)

// maxNameLen is the longest project name we send; the docs give no limit
// and the dashboard takes 64 characters (chosen, docs/supabase-api.md §9).
const maxNameLen = 64

var slugPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Config configures a Provider. AccessToken and OrganizationID are
// required, and Region is required unless a fake ignores it; every other
// zero value means the documented default. Config holds a secret
// (AccessToken): its String and LogValue methods mask it.
type Config struct {
	// APIURL is the Management API's base URL, without /v1. Empty means
	// DefaultAPIURL. Tests point it at supabasetest.
	APIURL string
	// AccessToken is a personal access token or OAuth token, sent as a
	// Bearer token. Secret. The caller reads it (SUPABASE_ACCESS_TOKEN);
	// this package reads no environment.
	AccessToken string
	// OrganizationID is the organization (slug) new projects belong to and
	// that lookups search.
	OrganizationID string
	// Region of new projects, e.g. "us-east-1".
	Region string
	// Plan is sent as the create call's plan ("free" or "pro"); empty
	// leaves it out (the organization's plan decides; §2).
	Plan string
	// InstanceSize is sent as desired_instance_size; empty leaves it out.
	InstanceSize string
	// NamePrefix is prepended to the tenant ID to name its project. Empty
	// means "tenant-".
	NamePrefix string

	// Endpoint is EndpointPooler (empty) or EndpointDirect.
	Endpoint string
	// PoolerMode is PoolerTransaction (empty) or PoolerSession.
	PoolerMode string
	// TransactionPort, SessionPort and DirectPort override the documented
	// ports (6543, 5432, 5432). Zero means the default.
	TransactionPort, SessionPort, DirectPort uint16

	// HTTPClient sends the API requests. Nil means a client with a
	// DefaultHTTPTimeout timeout.
	HTTPClient *http.Client
	// RequestsPerMinute caps the requests per scope (one project, or the
	// account for calls outside a project) in any 60 seconds. Zero means
	// 120, Supabase's limit; routers sharing a token should split it.
	RequestsPerMinute int
	// RetryBudget bounds the time one call spends retrying. Zero: 2m.
	RetryBudget time.Duration
	// RetryDelay is the first backoff ceiling (doubling, full jitter).
	// Zero: 500ms.
	RetryDelay time.Duration
	// PollInterval is the delay between status polls of a new project.
	// Zero: 2s.
	PollInterval time.Duration
	// CreateTimeout bounds the wait for a project to become healthy.
	// Zero: 10m.
	CreateTimeout time.Duration
	// CreateEstimate is what CreateEstimate reports (the router's 57P03
	// "about N minutes"). Zero: 2m.
	CreateEstimate time.Duration
	// LostWait is how long Create looks for the project of a create whose
	// answer was lost. Zero: 30s.
	LostWait time.Duration
	// Log receives debug lines about retries and info lines about created
	// and deleted projects. Nil means no logging.
	Log *slog.Logger
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (c *Config) apiURL() string {
	if c.APIURL == "" {
		return DefaultAPIURL
	}
	return strings.TrimRight(c.APIURL, "/")
}

func (c *Config) prefix() string {
	if c.NamePrefix == "" {
		return DefaultNamePrefix
	}
	return c.NamePrefix
}

func (c *Config) endpoint() string {
	if c.Endpoint == "" {
		return EndpointPooler
	}
	return c.Endpoint
}

func (c *Config) poolerMode() string {
	if c.PoolerMode == "" {
		return PoolerTransaction
	}
	return c.PoolerMode
}

func portOr(p, def uint16) uint16 {
	if p == 0 {
		return def
	}
	return p
}

func (c *Config) rpm() int {
	if c.RequestsPerMinute <= 0 {
		return DefaultRequestsPerMinute
	}
	return c.RequestsPerMinute
}

// Validate reports whether c can be used. New calls it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	u, err := url.Parse(c.apiURL())
	switch {
	case err != nil:
		bad("api url: %v", err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		bad("api url %q: want http(s)://host", u.Redacted())
	case u.User != nil:
		bad("api url %q: must not hold credentials", u.Redacted())
	}
	if c.AccessToken == "" {
		bad("access token is empty")
	} else if strings.ContainsAny(c.AccessToken, " \t\r\n") {
		bad("access token contains white space")
	}
	if !slugPattern.MatchString(c.OrganizationID) {
		bad("organization id %q: want the organization's slug (letters, digits, - and _)", c.OrganizationID)
	}
	if c.Region == "" {
		bad("region is empty (e.g. us-east-1)")
	}
	switch c.Plan {
	case "", "free", "pro":
	default:
		bad("plan %q: want free, pro or empty", c.Plan)
	}
	switch c.endpoint() {
	case EndpointPooler, EndpointDirect:
	default:
		bad("endpoint %q: want %s or %s", c.Endpoint, EndpointPooler, EndpointDirect)
	}
	switch c.poolerMode() {
	case PoolerTransaction, PoolerSession:
	default:
		bad("pooler mode %q: want %s or %s", c.PoolerMode, PoolerTransaction, PoolerSession)
	}
	if len(c.prefix()) >= maxNameLen-8 {
		bad("name prefix %q is too long (project names stay under %d characters)", c.prefix(), maxNameLen)
	}
	if c.RequestsPerMinute < 0 {
		bad("requests per minute must not be negative")
	}
	if len(errs) > 0 {
		return fmt.Errorf("supabase: config: %w", errors.Join(errs...))
	}
	return nil
}

// String describes c with the access token masked.
func (c Config) String() string {
	return fmt.Sprintf("supabase.Config{APIURL:%s AccessToken:%s OrganizationID:%s Region:%s NamePrefix:%s Endpoint:%s PoolerMode:%s}",
		c.apiURL(), maskToken(c.AccessToken), c.OrganizationID, c.Region, c.prefix(), c.endpoint(), c.poolerMode())
}

// LogValue implements slog.LogValuer with the access token masked.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("api_url", c.apiURL()),
		slog.String("access_token", maskToken(c.AccessToken)),
		slog.String("organization_id", c.OrganizationID),
		slog.String("region", c.Region),
		slog.String("name_prefix", c.prefix()),
		slog.String("endpoint", c.endpoint()),
		slog.String("pooler_mode", c.poolerMode()),
	)
}

func maskToken(t string) string {
	if t == "" {
		return "(unset)"
	}
	return "xxxxx"
}
