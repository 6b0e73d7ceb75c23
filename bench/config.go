package bench

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Scenario names a workload. Its string is the scenario's "name" in the
// JSON report.
type Scenario string

// The scenarios. Each runs against every target in turn, interleaved in
// rounds (see Config.Rounds).
const (
	// Steady holds Tenants x ConnsPerTenant connections open at once and
	// runs Query on each of them in a closed loop (or, with Rate, at that
	// many queries per second in all) for the round's share of Duration.
	Steady Scenario = "steady"
	// Storm runs every query on a fresh connection: Tenants x
	// ConnsPerTenant workers each connect, run Query once and hang up, over
	// and over (or at Rate queries per second in all).
	Storm Scenario = "storm"
	// Idle opens Tenants x ConnsPerTenant connections, holds them without
	// traffic for the round's share of Duration, then runs Query once on
	// each to see that they survived. With a Target.PID it reports the
	// serving process's memory per held connection.
	Idle Scenario = "idle"
	// Scale runs Steady at growing tenant counts: 1, 2, 4, ... up to
	// Tenants, each step a scenario of its own in the report.
	Scale Scenario = "scale"
	// Cold connects to NewTenants tenants that do not exist yet, each once,
	// and measures the time from starting to connect to the first query's
	// result (which includes creating the tenant's database behind a
	// router). A target with a Target.Cold hook is timed on the hook
	// instead. Up to Concurrency new tenants are in flight at once, or as
	// many as a round has if fewer (NewTenants / Rounds). Duration does
	// not apply.
	Cold Scenario = "cold"
	// Fairness pits one heavy tenant against small ones: tenant 0 gets
	// HeavyConns clients, tenants 1 .. Tenants-1 get ConnsPerTenant each,
	// all running Query in a closed loop on held connections as in Steady
	// (Rate does not apply). It runs as two steps, each in rounds of its
	// own: FairnessAlone, the small tenants' clients alone, then Fairness,
	// small and heavy together. Each step reports the small tenants' and
	// the heavy tenant's query latencies apart (Groups). Tenants must be at
	// least 2.
	Fairness Scenario = "fairness"
	// FairnessAlone names Fairness's first step in reports and Progress;
	// it is not a scenario of its own (ParseScenario rejects it).
	FairnessAlone Scenario = "fairness-alone"
)

// Scenarios lists every scenario, in the order the command line documents
// them.
var Scenarios = []Scenario{Steady, Storm, Idle, Scale, Cold, Fairness}

// ParseScenario returns the Scenario named s.
func ParseScenario(s string) (Scenario, error) {
	for _, sc := range Scenarios {
		if string(sc) == s {
			return sc, nil
		}
	}
	return "", fmt.Errorf("unknown scenario %q (want one of steady, storm, idle, scale, cold, fairness)", s)
}

// TenantPlaceholder is replaced by a tenant ID in a Target's DSN.
const TenantPlaceholder = "{tenant}"

// Target is one system under test: a router, Postgres itself, a pooler.
type Target struct {
	// Label names the target in reports. Empty means "target<n>", n being
	// its 1-based position in Config.Targets.
	Label string
	// DSN is a connection string (URL or key=value, as libpq takes it).
	// Every TenantPlaceholder in it is replaced by a tenant ID, e.g.
	// "postgres://{tenant}:secret@127.0.0.1:6432/app"; a DSN without one is
	// used as is for every tenant (for example Postgres itself, the
	// baseline). It usually holds a password: it never appears in errors or
	// reports. It may be empty for a target with a Cold hook, which then
	// runs in the Cold scenario only.
	DSN string
	// PID is the process serving the target (the router), whose VmRSS and
	// thread count are read from /proc/PID/status before and after each
	// round. Zero means not measured.
	PID int
	// Cold, when set, replaces connecting and querying in the Cold
	// scenario: for each new tenant Run calls Cold with a tenant ID no run
	// has used, and records the time until it returns as that tenant's time
	// to first query, or counts its error by class (SQLSTATE, "network" or
	// "timeout") like a failed connect. It lets a baseline that is not a
	// router, such as a bare CREATE DATABASE on the server, stand next to
	// the routers in the same rounds; the bench package itself stays
	// unaware of what it does. Run calls it from up to Concurrency
	// goroutines at once, each call under ConnectTimeout (behind a router,
	// creating a tenant happens within its connect); it must return when
	// ctx ends. Such a target reports no connects or queries in Cold.
	Cold func(ctx context.Context, tenant string) error
}

// String returns the label and the DSN with its password masked, so a
// Target is safe to log or print with %v.
func (t Target) String() string {
	return strings.TrimSpace(t.Label + " " + redactDSN(t.DSN))
}

var (
	kvPassword    = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
	queryPassword = regexp.MustCompile(`(?i)([?&]password=)[^&#]*`)
)

// redactDSN masks the password of a URL or key=value connection string.
// It works on the text (url.Parse rejects the {tenant} placeholder).
func redactDSN(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		if user, _, hasPw := strings.Cut(authority[:at], ":"); hasPw {
			authority = user + ":xxxxx" + authority[at:]
		}
	}
	return scheme + "://" + authority + queryPassword.ReplaceAllString(tail, "${1}xxxxx")
}

// Templated reports whether the DSN names the tenant.
func (t Target) Templated() bool { return strings.Contains(t.DSN, TenantPlaceholder) }

// Progress is a snapshot of a running benchmark, for a live status line.
type Progress struct {
	// Scenario and Tenants are the current scenario (FairnessAlone in
	// Fairness's first step) and its tenant count (which grows step by
	// step in Scale).
	Scenario Scenario
	Tenants  int
	// Target is the label of the target being driven.
	Target string
	// Round counts from 1 to Rounds.
	Round, Rounds int
	// Phase is "warmup", "connect", "run", "hold", "probe" or "close".
	Phase string
	// Open is the number of connections open right now.
	Open int64
	// Connects, Queries and Errors count successes and failures against
	// this target in the current scenario, over all rounds so far.
	Connects, Queries, Errors int64
	// Elapsed is the time since Run started.
	Elapsed time.Duration
}

// Config describes a benchmark run. The zero value of every field but
// Targets is usable; defaults are given with each field.
type Config struct {
	// Targets are the systems to drive, at least one. The first is the
	// baseline: every figure of the others is also reported as a ratio to
	// its figure. Labels must be unique.
	Targets []Target
	// Scenarios run in the given order. Empty means [Steady].
	Scenarios []Scenario
	// Tenants is the number of tenants (IDs TenantPrefix+"0" ...); zero
	// means 1.
	Tenants int
	// ConnsPerTenant is the number of connections (or storm workers) per
	// tenant; zero means 1. In Fairness it applies to the small tenants.
	ConnsPerTenant int
	// HeavyConns is the number of clients of Fairness's heavy tenant
	// (tenant 0); zero means 400.
	HeavyConns int
	// TenantPrefix starts every tenant ID; empty means "bench_". Cold's
	// new tenants are named TenantPrefix+"new_"+<random hex>+"_"+<n>.
	TenantPrefix string
	// NewTenants is the number of new tenants Cold connects to per target,
	// spread over the rounds; zero means Tenants.
	NewTenants int
	// Query is the SQL each client runs (simple protocol); empty means
	// "SELECT 1".
	Query string
	// Duration is how long each scenario (each Scale step) drives each
	// target in total; every round gets Duration/Rounds of it. Zero means
	// 10s.
	Duration time.Duration
	// Ramp spreads the opening of held connections (Steady, Idle, Scale,
	// Fairness) evenly over this long; zero opens them as fast as Concurrency allows.
	// Ramp time is not part of Duration.
	Ramp time.Duration
	// Rounds is the number of rounds (A B A B ...) the scenarios are
	// interleaved in; zero means 3.
	Rounds int
	// Rate, when positive, makes Steady, Scale and Storm open-loop: queries
	// are due at this many per second in all, evenly spaced, whether or
	// not earlier ones have finished, and each query's latency counts from
	// when it was due (so queueing is not hidden). Zero means closed loop:
	// each client runs its next query as soon as the last one finished.
	Rate float64
	// Concurrency caps the number of connection attempts in flight at once
	// when opening held connections, during Cold and during warm-up; zero
	// means 64.
	Concurrency int
	// ConnectTimeout bounds each connection attempt (TCP, TLS, startup,
	// authentication); zero means 10s. An attempt that runs out counts as
	// a "timeout" error.
	ConnectTimeout time.Duration
	// QueryTimeout bounds each query; zero means 30s.
	QueryTimeout time.Duration
	// NoWarmup skips the warm-up: by default, before the first scenario
	// other than Cold, Run connects once to each tenant of each templated
	// target without measuring, so that creating tenants on their first
	// connect is not counted (Cold measures that).
	NoWarmup bool
	// Progress, when set, is called about every ProgressInterval with a
	// snapshot of the run, from a single goroutine owned by Run (never
	// concurrently, never after Run returned). It must not block for long.
	Progress func(Progress)
	// ProgressInterval is how often Progress is called; zero means 500ms.
	ProgressInterval time.Duration
}

func (c *Config) scenarios() []Scenario {
	if len(c.Scenarios) == 0 {
		return []Scenario{Steady}
	}
	return c.Scenarios
}

func (c *Config) tenants() int {
	if c.Tenants <= 0 {
		return 1
	}
	return c.Tenants
}

func (c *Config) connsPerTenant() int {
	if c.ConnsPerTenant <= 0 {
		return 1
	}
	return c.ConnsPerTenant
}

func (c *Config) heavyConns() int {
	if c.HeavyConns <= 0 {
		return 400
	}
	return c.HeavyConns
}

func (c *Config) tenantPrefix() string {
	if c.TenantPrefix == "" {
		return "bench_"
	}
	return c.TenantPrefix
}

func (c *Config) newTenants() int {
	if c.NewTenants <= 0 {
		return c.tenants()
	}
	return c.NewTenants
}

func (c *Config) query() string {
	if c.Query == "" {
		return "SELECT 1"
	}
	return c.Query
}

func (c *Config) duration() time.Duration {
	if c.Duration <= 0 {
		return 10 * time.Second
	}
	return c.Duration
}

func (c *Config) rounds() int {
	if c.Rounds <= 0 {
		return 3
	}
	return c.Rounds
}

func (c *Config) concurrency() int {
	if c.Concurrency <= 0 {
		return 64
	}
	return c.Concurrency
}

func (c *Config) connectTimeout() time.Duration {
	if c.ConnectTimeout <= 0 {
		return 10 * time.Second
	}
	return c.ConnectTimeout
}

func (c *Config) queryTimeout() time.Duration {
	if c.QueryTimeout <= 0 {
		return 30 * time.Second
	}
	return c.QueryTimeout
}

func (c *Config) progressInterval() time.Duration {
	if c.ProgressInterval <= 0 {
		return 500 * time.Millisecond
	}
	return c.ProgressInterval
}

// label returns the label of target i.
func (c *Config) label(i int) string {
	if l := c.Targets[i].Label; l != "" {
		return l
	}
	return fmt.Sprintf("target%d", i+1)
}

// MaxOpenConns returns the most connections the run holds open at once
// (plus connection attempts in flight): what the open-file limit must
// allow, besides a few descriptors of the process's own.
func (c *Config) MaxOpenConns() int {
	n := c.concurrency() // warm-up
	for _, sc := range c.scenarios() {
		switch sc {
		case Cold:
			n = max(n, min(c.concurrency(), c.newTenants()))
		case Fairness:
			n = max(n, (c.tenants()-1)*c.connsPerTenant()+c.heavyConns())
		default:
			n = max(n, c.tenants()*c.connsPerTenant())
		}
	}
	return n
}

// Validate reports what is wrong with c, all problems at once.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Targets) == 0 {
		errs = append(errs, errors.New("no target: give at least one DSN"))
	}
	seen := map[string]bool{}
	for i, t := range c.Targets {
		l := c.label(i)
		if seen[l] {
			errs = append(errs, fmt.Errorf("target label %q used twice", l))
		}
		seen[l] = true
		switch {
		case strings.TrimSpace(t.DSN) != "":
		case t.Cold == nil:
			errs = append(errs, fmt.Errorf("target %s: empty DSN", l))
		case slices.ContainsFunc(c.scenarios(), func(sc Scenario) bool { return sc != Cold }):
			errs = append(errs, fmt.Errorf("target %s: no DSN, only a Cold hook: it can run the cold scenario only", l))
		}
		if t.PID < 0 {
			errs = append(errs, fmt.Errorf("target %s: negative PID %d", l, t.PID))
		}
	}
	for _, sc := range c.Scenarios {
		if _, err := ParseScenario(string(sc)); err != nil {
			errs = append(errs, err)
		}
	}
	if slices.Contains(c.Scenarios, Fairness) && c.tenants() < 2 {
		errs = append(errs, errors.New("fairness needs at least 2 tenants: a heavy one and a small one"))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"tenants", int64(c.Tenants)}, {"conns per tenant", int64(c.ConnsPerTenant)}, {"heavy conns", int64(c.HeavyConns)},
		{"new tenants", int64(c.NewTenants)}, {"rounds", int64(c.Rounds)},
		{"concurrency", int64(c.Concurrency)}, {"duration", int64(c.Duration)},
		{"ramp", int64(c.Ramp)}, {"connect timeout", int64(c.ConnectTimeout)},
		{"query timeout", int64(c.QueryTimeout)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", f.name))
		}
	}
	if c.Rate < 0 {
		errs = append(errs, errors.New("rate must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
