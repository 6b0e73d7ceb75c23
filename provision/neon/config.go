package neon

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Mode selects what a tenant is at Neon.
type Mode string

const (
	// ModeBranch gives each tenant a branch (with one read_write endpoint)
	// created from a template branch, in one of Config.Projects.
	ModeBranch Mode = "branch"
	// ModeProject gives each tenant a project of its own, Neon's recommended
	// unit of isolation (docs/neon-api.md §10).
	ModeProject Mode = "project"
)

// Defaults for the zero Config.
const (
	DefaultBaseURL           = "https://console.neon.tech/api/v2"
	DefaultPrefix            = "tenant-"
	DefaultRequestsPerMinute = 700 // per account (docs/neon-api.md §2.3)
	DefaultRoutePerSecond    = 40  // per route (docs/neon-api.md §2.3)
	DefaultRetryBudget       = 2 * time.Minute
	DefaultRetryDelay        = 500 * time.Millisecond
	DefaultOpPollInterval    = 500 * time.Millisecond
	DefaultOpTimeout         = 2 * time.Minute
	// DefaultHTTPTimeout bounds one API request (the whole exchange) when
	// Config.HTTPClient is nil.
	DefaultHTTPTimeout = 30 * time.Second
)

const (
	// maxNameLen is the longest project or branch name Neon accepts
	// (docs/neon-api.md §3.1 and §4.1).
	maxNameLen = 256
	// maxSuspend is the longest suspend timeout Neon accepts
	// (docs/neon-api.md §9.2).
	maxSuspend = 604800 * time.Second
	minSuspend = 60 * time.Second
	minCU      = 0.25
)

// idPattern is the spec's pattern for every Neon id (docs/neon-api.md §1).
var idPattern = regexp.MustCompile(`^[a-z0-9-]{1,60}$`)

// BranchProject is a Neon project that holds tenant branches (ModeBranch).
type BranchProject struct {
	// ID is the project id, e.g. "sparkling-hill-99143322".
	ID string
	// ParentBranchID is the template branch tenants are branched from.
	// Empty means the project's default branch.
	ParentBranchID string
	// MaxBranches caps the branches (of any kind, as Neon counts them,
	// template included) this provider lets the project hold. Zero means no
	// cap of ours: the project is used until Neon answers 422
	// BRANCHES_LIMIT_EXCEEDED. A cap costs one extra API call per Create.
	MaxBranches int
}

// Config configures a Provider. Only APIKey and, in branch mode, Projects
// are required; every other zero value means the documented default.
// Config holds a secret (APIKey): its String and LogValue methods mask it.
type Config struct {
	// BaseURL is the API's base URL. Empty means DefaultBaseURL. Tests and
	// development point it at a fake (provision/neon/neontest).
	BaseURL string
	// APIKey is the Neon API key, sent as a Bearer token. Secret: it never
	// appears in errors or logs. The caller reads it (e.g. from
	// NEON_API_KEY); this package reads no environment.
	APIKey string
	// Mode is ModeBranch or ModeProject. Empty means ModeBranch when
	// Projects is set and ModeProject otherwise.
	Mode Mode

	// Projects are the projects tenant branches are spread over, in order
	// (ModeBranch only): a tenant goes to the first project not known to be
	// full. A project is full once Neon refuses a branch with 422
	// BRANCHES_LIMIT_EXCEEDED or it holds MaxBranches branches.
	Projects []BranchProject

	// RegionID is the region of new tenant projects, e.g. "aws-us-east-2"
	// (ModeProject only). Empty means the account's default.
	RegionID string
	// PGVersion is the Postgres major version of new tenant projects
	// (ModeProject only). Zero means Neon's default (17).
	PGVersion int
	// OrgID is the organization new tenant projects belong to and that
	// lookups search (ModeProject only). Required by Neon with a personal
	// API key on an account that belongs to organizations.
	OrgID string

	// SuspendTimeout is how long a tenant's compute stays up without
	// connections before it scales to zero. Zero means Neon's default
	// (5 minutes); negative means never suspend; otherwise 60s to 7 days,
	// in whole seconds. Plans may refuse some values (docs/neon-api.md §9.2).
	SuspendTimeout time.Duration
	// MinCU and MaxCU are the autoscaling limits of a tenant's compute, in
	// compute units (at least 0.25). Zero means Neon's default.
	MinCU, MaxCU float64

	// Database is the database a tenant connects to. Empty means the
	// tenant's only (or first) database, "neondb" on a fresh project.
	Database string
	// Role is the role a tenant connects as. Empty means the owner of
	// Database ("neondb_owner" on a fresh project).
	Role string
	// UniquePasswords resets Role's password on every new tenant branch
	// (ModeBranch only). Without it every branch of a template keeps the
	// template role's password (docs/neon-api.md §4.2), so one leaked password
	// opens every tenant's endpoint. It costs one POST and an operation wait
	// per new tenant. Project mode passwords are always unique.
	UniquePasswords bool
	// Prefix is prepended to the tenant ID to form the branch or project
	// name. Empty means "tenant-".
	Prefix string

	// HTTPClient sends the API requests. Nil means a client with a
	// DefaultHTTPTimeout timeout per request.
	HTTPClient *http.Client
	// RequestsPerMinute caps the requests this provider sends, over all
	// tenants and routes, in any 60 seconds. Zero means 700, Neon's
	// per-account limit; several router instances (or other tools) sharing
	// one account should split it. Callers over the limit wait (bounded by
	// their ctx); they do not fail.
	RequestsPerMinute int
	// RoutePerSecond caps the requests to one route (method + path
	// template, e.g. "POST /projects/{}/branches") in any second. Zero
	// means 40, Neon's per-route burst limit.
	RoutePerSecond int
	// RetryBudget bounds the time one API call spends retrying 423, 429 and
	// 503 answers (and, for reads, 5xx and transport errors). Zero means 2m.
	RetryBudget time.Duration
	// RetryDelay is the ceiling of the first retry's delay; it doubles per
	// attempt up to 32 times itself, and each delay is drawn uniformly below
	// the ceiling (full jitter). Zero means 500ms.
	RetryDelay time.Duration
	// OpPollInterval is the delay between polls of an operation; it grows
	// by half each round up to 4 times itself. Zero means 500ms.
	OpPollInterval time.Duration
	// OpTimeout bounds the wait for a call's operations to finish (and for
	// an adopted branch to become ready). Zero means 2m.
	OpTimeout time.Duration
	// Log receives debug lines about retries and info lines about created
	// and deleted tenants. Nil means no logging.
	Log *slog.Logger
}

func (c *Config) baseURL() string {
	if c.BaseURL == "" {
		return DefaultBaseURL
	}
	return strings.TrimRight(c.BaseURL, "/")
}

func (c *Config) mode() Mode {
	if c.Mode == "" {
		if len(c.Projects) > 0 {
			return ModeBranch
		}
		return ModeProject
	}
	return c.Mode
}

func (c *Config) prefix() string {
	if c.Prefix == "" {
		return DefaultPrefix
	}
	return c.Prefix
}

func (c *Config) requestsPerMinute() int {
	if c.RequestsPerMinute <= 0 {
		return DefaultRequestsPerMinute
	}
	return c.RequestsPerMinute
}

func (c *Config) routePerSecond() int {
	if c.RoutePerSecond <= 0 {
		return DefaultRoutePerSecond
	}
	return c.RoutePerSecond
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (c *Config) retryBudget() time.Duration { return orDefault(c.RetryBudget, DefaultRetryBudget) }
func (c *Config) retryDelay() time.Duration  { return orDefault(c.RetryDelay, DefaultRetryDelay) }
func (c *Config) opPoll() time.Duration      { return orDefault(c.OpPollInterval, DefaultOpPollInterval) }
func (c *Config) opTimeout() time.Duration   { return orDefault(c.OpTimeout, DefaultOpTimeout) }

// suspendSeconds is the API's suspend_timeout_seconds: 0 = Neon's default,
// -1 = never.
func (c *Config) suspendSeconds() int64 {
	switch {
	case c.SuspendTimeout == 0:
		return 0
	case c.SuspendTimeout < 0:
		return -1
	default:
		return int64(c.SuspendTimeout / time.Second)
	}
}

// Validate reports whether c can be used. New calls it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	u, err := url.Parse(c.baseURL())
	switch {
	case err != nil:
		bad("base URL: %v", err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		bad("base URL %q: want http(s)://host/...", u.Redacted())
	case u.User != nil:
		bad("base URL %q: must not hold credentials", u.Redacted())
	}
	if c.APIKey == "" {
		bad("API key is empty")
	} else if strings.ContainsAny(c.APIKey, " \t\r\n") {
		bad("API key contains white space")
	}

	switch c.mode() {
	case ModeBranch:
		if len(c.Projects) == 0 {
			bad("branch mode needs at least one project")
		}
		seen := make(map[string]bool)
		for i, p := range c.Projects {
			if !idPattern.MatchString(p.ID) {
				bad("projects[%d]: id %q is not a Neon id", i, p.ID)
			}
			if seen[p.ID] {
				bad("projects[%d]: project %q is listed twice", i, p.ID)
			}
			seen[p.ID] = true
			if p.ParentBranchID != "" && !idPattern.MatchString(p.ParentBranchID) {
				bad("projects[%d]: parent branch id %q is not a Neon id", i, p.ParentBranchID)
			}
			if p.MaxBranches < 0 {
				bad("projects[%d]: max branches %d is negative", i, p.MaxBranches)
			}
		}
		if c.RegionID != "" || c.PGVersion != 0 || c.OrgID != "" {
			bad("region, pg version and org id apply to project mode only (branches inherit them from their project)")
		}
	case ModeProject:
		if len(c.Projects) > 0 {
			bad("projects are for branch mode; project mode creates a project per tenant")
		}
		if c.PGVersion != 0 && (c.PGVersion < 14 || c.PGVersion > 18) {
			bad("pg version %d: want 14 to 18", c.PGVersion)
		}
		if c.OrgID != "" && !idPattern.MatchString(c.OrgID) {
			bad("org id %q is not a Neon id", c.OrgID)
		}
		if c.RegionID != "" && !idPattern.MatchString(c.RegionID) {
			bad("region id %q is not a Neon region id", c.RegionID)
		}
		if c.UniquePasswords {
			bad("unique passwords apply to branch mode only (every project has its own)")
		}
	default:
		bad("mode %q: want %q or %q", c.Mode, ModeBranch, ModeProject)
	}

	if s := c.SuspendTimeout; s > 0 && (s < minSuspend || s > maxSuspend || s%time.Second != 0) {
		bad("suspend timeout %v: want whole seconds from %v to %v, 0 (Neon's default) or negative (never)", s, minSuspend, maxSuspend)
	}
	for _, cu := range []struct {
		name string
		v    float64
	}{{"min CU", c.MinCU}, {"max CU", c.MaxCU}} {
		if cu.v != 0 && (cu.v < minCU || math.IsNaN(cu.v) || math.IsInf(cu.v, 0)) {
			bad("%s %v: want at least %v, or 0 for Neon's default", cu.name, cu.v, minCU)
		}
	}
	if c.MinCU > 0 && c.MaxCU > 0 && c.MinCU > c.MaxCU {
		bad("min CU %v is above max CU %v", c.MinCU, c.MaxCU)
	}
	if len(c.prefix()) >= maxNameLen {
		bad("prefix %q is too long (max %d bytes)", c.prefix(), maxNameLen-1)
	}
	if c.RequestsPerMinute < 0 || c.RoutePerSecond < 0 {
		bad("request limits must not be negative")
	}
	if len(errs) > 0 {
		return fmt.Errorf("neon: config: %w", errors.Join(errs...))
	}
	return nil
}

// String describes c with the API key masked.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "neon.Config{BaseURL:%s APIKey:%s Mode:%s", c.baseURL(), maskKey(c.APIKey), c.mode())
	if c.mode() == ModeBranch {
		fmt.Fprintf(&b, " Projects:%v", c.Projects)
	} else {
		fmt.Fprintf(&b, " RegionID:%s PGVersion:%d OrgID:%s", c.RegionID, c.PGVersion, c.OrgID)
	}
	fmt.Fprintf(&b, " Prefix:%s Database:%s Role:%s}", c.prefix(), c.Database, c.Role)
	return b.String()
}

// LogValue implements slog.LogValuer with the API key masked.
func (c Config) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("base_url", c.baseURL()),
		slog.String("api_key", maskKey(c.APIKey)),
		slog.String("mode", string(c.mode())),
		slog.String("prefix", c.prefix()),
	}
	if c.mode() == ModeBranch {
		ids := make([]string, len(c.Projects))
		for i, p := range c.Projects {
			ids[i] = p.ID
		}
		attrs = append(attrs, slog.Any("projects", ids))
	} else {
		attrs = append(attrs, slog.String("region", c.RegionID), slog.String("org_id", c.OrgID))
	}
	return slog.GroupValue(attrs...)
}

// maskKey shows that a key is set, and nothing of it.
func maskKey(k string) string {
	if k == "" {
		return "(unset)"
	}
	return "xxxxx"
}
