package rds

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Kind selects what a tenant is at AWS.
type Kind string

const (
	// KindAurora gives each tenant an Aurora PostgreSQL cluster with one
	// Serverless v2 (db.serverless) writer instance
	// (docs/aws-rds-api.md §3.1).
	KindAurora Kind = "aurora"
	// KindRDS gives each tenant an RDS for PostgreSQL DB instance
	// (docs/aws-rds-api.md §3.2).
	KindRDS Kind = "rds"
)

// Defaults for the zero Config.
const (
	DefaultPrefix           = "pgtenant-"
	DefaultDatabase         = "app"
	DefaultMasterUsername   = "pgtenant"
	DefaultMaxCapacity      = 4.0
	DefaultAutoPauseSeconds = 300
	DefaultInstanceClass    = "db.t4g.micro"
	DefaultAllocatedStorage = 20
	// Typical creation times (docs/aws-rds-api.md §7): what the router
	// tells clients while it creates.
	DefaultAuroraEstimate = 10 * time.Minute
	DefaultRDSEstimate    = 15 * time.Minute
	DefaultPollInterval   = 15 * time.Second
	DefaultRetryBudget    = 2 * time.Minute
	DefaultRetryDelay     = 500 * time.Millisecond
	// DefaultHTTPTimeout bounds one API request when Config.HTTPClient is nil.
	DefaultHTTPTimeout = 30 * time.Second
	// EnvPasswordKey is where the router reads PasswordKey from.
	EnvPasswordKey = "PGTENANT_AWS_PASSWORD_KEY"
)

// Limits from docs/aws-rds-api.md.
const (
	maxIdentLen      = 63 // §2
	maxPrefixLen     = 20 // ours: leaves 40 characters for the tenant
	writerSuffix     = "-w"
	minPasswordKey   = 16
	minAutoPause     = 300   // §3.1
	maxAutoPause     = 86400 // §3.1
	maxACU           = 256   // §3.1
	minStorage       = 20    // §3.2
	maxStorage       = 65536 // §3.2
	auroraInstance   = "db.serverless"
	auroraEngine     = "aurora-postgresql"
	rdsEngine        = "postgres"
	tagTenant        = "pgtenant:tenant"
	passwordLen      = 40 // Aurora takes at most 41 (§3.1)
	defaultPollFloor = 10 * time.Millisecond
)

var (
	prefixRE   = regexp.MustCompile(`^[a-z]([a-z0-9]|-[a-z0-9])*-?$`)
	usernameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,15}$`)
	dbNameRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,62}$`)
)

// Config configures a Provider. Kind, Region and PasswordKey are required;
// every other zero value means the documented default. Config holds a
// secret (PasswordKey): its String and LogValue methods mask it.
type Config struct {
	// Kind is KindAurora or KindRDS.
	Kind Kind
	// Region is the AWS region, e.g. "eu-central-1".
	Region string
	// EndpointURL, when set, replaces the regional RDS API endpoint (the
	// SDK's BaseEndpoint): tests and `pgtenant dev` point it at rdstest.
	EndpointURL string
	// IdentifierPrefix starts every cluster and instance identifier. It
	// must start with a letter and hold only lowercase letters, digits
	// and single hyphens, at most 20 characters. Empty means "pgtenant-".
	IdentifierPrefix string
	// SubnetGroup is the DB subnet group (VPC) tenants are created in.
	// Empty means the account's default VPC.
	SubnetGroup string
	// SecurityGroups are VPC security group IDs; they must let the router
	// reach port 5432. Empty means the VPC's default group.
	SecurityGroups []string
	// MinCapacity and MaxCapacity are Aurora Serverless v2's capacity range
	// in ACUs (half steps). MinCapacity 0 lets idle clusters pause (engine
	// versions that support it, §3.1). Zero MaxCapacity means 4.
	MinCapacity, MaxCapacity float64
	// AutoPauseSeconds is how long an idle Aurora writer waits before it
	// pauses, 300 to 86400, sent only when MinCapacity is 0. Zero means 300.
	AutoPauseSeconds int
	// InstanceClass is the RDS instance class. Empty means db.t4g.micro.
	// Aurora writers are always db.serverless.
	InstanceClass string
	// AllocatedStorage is the RDS instance's storage in GiB, 20 to 65536.
	// Zero means 20.
	AllocatedStorage int
	// EngineVersion pins the engine version ("16.6"). Empty means AWS's
	// default for the engine.
	EngineVersion string
	// Database is the database made in every tenant's cluster or instance
	// (DatabaseName/DBName). Empty means "app".
	Database string
	// MasterUsername is the master user the router logs in as (each tenant
	// has a cluster or instance of its own, so no per-tenant role is
	// needed). Empty means "pgtenant".
	MasterUsername string
	// PasswordKey derives each tenant's master password (HMAC-SHA256 of the
	// tenant), so a create whose answer was lost can be adopted with a
	// known password. At least 16 bytes. Secret; the router reads it from
	// PGTENANT_AWS_PASSWORD_KEY. Changing it locks the router out of
	// tenants created before.
	PasswordKey string
	// SkipFinalSnapshot deletes without a final snapshot. False (the
	// default, as in the API) snapshots first, as
	// "<identifier>-final-<UTC time>".
	SkipFinalSnapshot bool
	// Estimate is what CreateEstimate reports. Zero means 10 minutes for
	// Aurora and 15 for RDS.
	Estimate time.Duration
	// PollInterval is the longest wait between status checks while a
	// cluster or instance is created or deleted; checks start at a quarter
	// of it and back off. Zero means 15s.
	PollInterval time.Duration
	// RetryBudget bounds the retries of one API call that is throttled or
	// whose answer is lost. Zero means 2 minutes.
	RetryBudget time.Duration
	// RetryDelay is the first wait before such a retry (doubling, with
	// jitter, up to 20s). Zero means 500ms.
	RetryDelay time.Duration
	// Credentials, when not nil, replaces the SDK's default credential
	// chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO,
	// instance or task roles).
	Credentials aws.CredentialsProvider
	// HTTPClient, when not nil, sends the API requests.
	HTTPClient *http.Client
	// Log receives warnings and progress. Nil discards.
	Log *slog.Logger
}

// String describes c with the password key masked.
func (c Config) String() string {
	return fmt.Sprintf("rds.Config{Kind: %s, Region: %s, EndpointURL: %q, IdentifierPrefix: %q, PasswordKey: xxxxx}",
		c.Kind, c.Region, c.EndpointURL, c.prefix())
}

// LogValue implements slog.LogValuer without the password key.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("kind", string(c.Kind)),
		slog.String("region", c.Region),
		slog.String("endpoint_url", c.EndpointURL),
		slog.String("identifier_prefix", c.prefix()),
	)
}

func (c *Config) prefix() string {
	if c.IdentifierPrefix == "" {
		return DefaultPrefix
	}
	return c.IdentifierPrefix
}

func (c *Config) database() string       { return or(c.Database, DefaultDatabase) }
func (c *Config) masterUsername() string { return or(c.MasterUsername, DefaultMasterUsername) }
func (c *Config) instanceClass() string  { return or(c.InstanceClass, DefaultInstanceClass) }

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func orDur(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

func (c *Config) maxCapacity() float64 {
	if c.MaxCapacity == 0 {
		return math.Max(DefaultMaxCapacity, c.MinCapacity)
	}
	return c.MaxCapacity
}

func (c *Config) autoPause() int {
	if c.AutoPauseSeconds == 0 {
		return DefaultAutoPauseSeconds
	}
	return c.AutoPauseSeconds
}

func (c *Config) allocatedStorage() int {
	if c.AllocatedStorage == 0 {
		return DefaultAllocatedStorage
	}
	return c.AllocatedStorage
}

func (c *Config) estimate() time.Duration {
	if c.Kind == KindAurora {
		return orDur(c.Estimate, DefaultAuroraEstimate)
	}
	return orDur(c.Estimate, DefaultRDSEstimate)
}

// halfStep says v is a multiple of 0.5 (ACUs come in half steps, §3.1).
func halfStep(v float64) bool { return v*2 == math.Trunc(v*2) }

// Validate checks c without calling AWS. The errors name the config keys
// (provider.aurora.* / provider.rds.*) by their YAML names.
func (c *Config) Validate() error {
	var errs []error
	switch c.Kind {
	case KindAurora, KindRDS:
	default:
		errs = append(errs, fmt.Errorf("kind: %q is not aurora or rds", c.Kind))
	}
	if c.Region == "" {
		errs = append(errs, errors.New("region: empty: set the AWS region, e.g. eu-central-1"))
	}
	if p := c.prefix(); len(p) > maxPrefixLen || !prefixRE.MatchString(p) {
		errs = append(errs, fmt.Errorf("identifier_prefix: %q must start with a letter, hold only lowercase letters, digits and single hyphens, and be at most %d characters", p, maxPrefixLen))
	}
	if len(c.PasswordKey) < minPasswordKey {
		errs = append(errs, fmt.Errorf("password_key: empty or shorter than %d bytes: set %s (pgtenant genkey prints one)", minPasswordKey, EnvPasswordKey))
	}
	if !usernameRE.MatchString(c.masterUsername()) {
		errs = append(errs, fmt.Errorf("master_username: %q must be 1 to 16 letters, digits or underscores, starting with a letter", c.MasterUsername))
	}
	if !dbNameRE.MatchString(c.database()) {
		errs = append(errs, fmt.Errorf("database: %q must be 1 to 63 letters, digits or underscores, starting with a letter", c.Database))
	}
	for _, sg := range c.SecurityGroups {
		if !strings.HasPrefix(sg, "sg-") {
			errs = append(errs, fmt.Errorf("security_groups: %q is not a VPC security group ID (sg-...)", sg))
		}
	}
	switch c.Kind {
	case KindAurora:
		lo, hi := c.MinCapacity, c.maxCapacity()
		if lo < 0 || hi > maxACU || hi < 1 || lo > hi || !halfStep(lo) || !halfStep(hi) {
			errs = append(errs, fmt.Errorf("min_capacity %v, max_capacity %v: want 0 <= min <= max <= %d ACUs in half steps, max at least 1", lo, hi, maxACU))
		}
		if a := c.autoPause(); a < minAutoPause || a > maxAutoPause {
			errs = append(errs, fmt.Errorf("auto_pause_seconds: %d is not between %d and %d", a, minAutoPause, maxAutoPause))
		}
	case KindRDS:
		if s := c.allocatedStorage(); s < minStorage || s > maxStorage {
			errs = append(errs, fmt.Errorf("allocated_storage: %d GiB is not between %d and %d", s, minStorage, maxStorage))
		}
		if c.instanceClass() == auroraInstance || !strings.HasPrefix(c.instanceClass(), "db.") {
			errs = append(errs, fmt.Errorf("instance_class: %q is not an RDS instance class (db.t4g.micro, db.m7g.large, ...)", c.InstanceClass))
		}
	}
	if c.Estimate < 0 || c.PollInterval < 0 || c.RetryBudget < 0 || c.RetryDelay < 0 {
		errs = append(errs, errors.New("estimate, poll_interval, retry_budget, retry_delay: negative"))
	}
	return errors.Join(errs...)
}
