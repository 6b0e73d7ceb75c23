package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/testbed"
)

const benchUsage = `Usage: pgtenant bench [flags] --dsn DSN [--compare DSN ...]
       pgtenant bench --self [flags]

Measures a Postgres connection router under fan-out: N tenants x M connections
(steady), a connection per query (storm), idle connections held (idle), growing
tenant counts (scale), first connects of new tenants (cold), and one heavy
tenant next to small ones (fairness: tenant 0 with --heavy-conns clients,
tenants 1..N-1 with M each; the small tenants' query latency is reported alone
and with the heavy one, and their p99 with it over their p99 alone). In a DSN,
{tenant} is replaced by the tenant IDs <prefix>0, <prefix>1, ...; a DSN without
it is used as is (e.g. Postgres itself, as the baseline).

Targets given with --compare run the same scenarios in the same run, interleaved
in rounds (A B A B ...), and every figure is also shown as a ratio to the first
target's: on a shared, noisy machine only side-by-side ratios mean something.

Examples:
  pgtenant bench --dsn 'postgres://postgres:pw@127.0.0.1:5432/app' --label direct \
      --compare 'postgres://{tenant}:pgtenant-dev@127.0.0.1:6432/app' --label router \
      --tenants 100 --conns-per-tenant 10 --ramp 5s --duration 30s
  pgtenant bench --dsn 'postgres://{tenant}:pgtenant-dev@127.0.0.1:6432/app' --new-conn-per-query
  pgtenant bench --dsn 'postgres://{tenant}:pgtenant-dev@127.0.0.1:6432/app' --scenario cold --new-tenants 50
  pgtenant bench --dsn 'postgres://{tenant}:pgtenant-dev@127.0.0.1:6432/app' --scenario fairness \
      --tenants 21 --conns-per-tenant 2 --heavy-conns 400

--self needs no setup: it starts a throwaway Postgres, PgBouncer in session
and transaction mode (if installed) and the routers (pgtenant serve, as child
processes), and compares direct, pgbouncer-session, pgbouncer-transaction,
router, router-pooled-session, router-pooled-tx (the router pooling upstream
connections itself, pool.mode session and transaction) and router-pgbouncer on
the same tenant databases, with SCRAM logins everywhere and the routers' and
PgBouncers' memory measured; all of it is removed when the run ends. --self-targets picks some of them, and only what
those need is started, e.g. for ~10,000 idle connections through the router
to PgBouncer:
  pgtenant bench --self --self-targets pgbouncer-transaction,router-pgbouncer \
      --scenario idle --tenants 980 --conns-per-tenant 10 --duration 60s --rounds 1
Cold compares the routers with create-database, a bare CREATE DATABASE ...
TEMPLATE per new tenant on the same cluster, which is the baseline:
  pgtenant bench --self --scenario cold --new-tenants 100 --concurrency 100 --rounds 1

The table goes to standard output, a live progress line to standard error when
it is a terminal. --json writes the report in the shape documented in
'go doc github.com/pgtenant/pgtenant/bench'; --report writes it as an HTML page
with plots.

Flags:
`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant bench", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	dsn := fs.String("dsn", "", "the first target's DSN, the baseline for ratios ({tenant} is replaced by tenant IDs); may also be given as the only argument")
	compare := fs.StringArray("compare", nil, "another target's DSN, run in the same rounds (repeatable)")
	labels := fs.StringArray("label", nil, "name of a target in reports, in order: --dsn's first, then each --compare's (repeatable; default target1, target2, ...)")
	tenants := fs.Int("tenants", 10, "number of tenants N")
	conns := fs.Int("conns-per-tenant", 1, "connections per tenant M, held concurrently (storm: workers per tenant; fairness: per small tenant)")
	heavyConns := fs.Int("heavy-conns", 400, "fairness: connections of the heavy tenant (tenant 0), each running the query in a closed loop")
	prefix := fs.String("tenant-prefix", "bench_", "tenant IDs are <prefix>0 .. <prefix>N-1")
	query := fs.String("query", "SELECT 1", "SQL each client runs, over and over (simple protocol)")
	duration := fs.Duration("duration", 10*time.Second, "how long each scenario drives each target, split over the rounds")
	ramp := fs.Duration("ramp", 0, "spread opening the held connections over this long (0: as fast as --concurrency allows)")
	rounds := fs.Int("rounds", 3, "rounds to interleave the targets in (A B A B ...)")
	storm := fs.Bool("new-conn-per-query", false, "connection storm: run every query on a fresh connection (the storm scenario)")
	newTenants := fs.Int("new-tenants", 0, "cold start: first connect to K tenants that do not exist yet and time each one's first query (adds the cold scenario, run first)")
	rate := fs.Float64("rate", 0, "open loop: queries due per second in all, latency counted from when each was due (0: closed loop)")
	scenarioNames := fs.StringSlice("scenario", nil, "scenarios to run, in order: steady, storm, idle, scale, cold, fairness (default steady, or storm with --new-conn-per-query)")
	concurrency := fs.Int("concurrency", 64, "connection attempts in flight at once while opening connections")
	connectTimeout := fs.Duration("connect-timeout", 10*time.Second, "limit for each connection attempt (counted as a timeout error)")
	queryTimeout := fs.Duration("query-timeout", 30*time.Second, "limit for each query (counted as a timeout error)")
	noWarmup := fs.Bool("no-warmup", false, "skip connecting once to each tenant before measuring (which keeps creating tenants out of the figures)")
	pids := fs.StringArray("pid", nil, "[LABEL=]PID of the process serving a target (the router): its RSS and threads are read before and after each round; PID alone applies to every target (repeatable)")
	jsonPath := fs.String("json", "", "also write the report as JSON to this file")
	htmlPath := fs.String("report", "", "also write the report as a self-contained HTML page with plots (latency CDFs, connections and throughput over time) to this file, e.g. bench.html")
	self := fs.Bool("self", false, "start Postgres, PgBouncer and the router in a temporary directory and compare them (no --dsn, --compare, --label or --pid: it sets them)")
	selfTargetNames := fs.StringSlice("self-targets", nil, "with --self: the targets to start and compare, comma-separated, from "+
		strings.Join(testbed.Labels(), ", ")+" (default all); they run in that order, the first chosen as the baseline, and cold adds "+testbed.CreateDatabase+" as its baseline")
	selfPoolBudget := fs.Int("self-pool-budget", 0, "with --self: the pooled routers' pool.max_server_connections (also capping max_per_tenant); 0: room for every client connection at once")
	selfMaxConns := fs.Int("self-max-connections", 0, "with --self: Postgres' max_connections; 0: sized for the chosen targets")
	selfSpares := fs.Int("self-spares", 0, "with --self: spare databases the routers keep cloned ahead of demand (provider.local.spares); cold then measures a new tenant taking one")
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *self:
		for _, f := range []string{"dsn", "compare", "label", "pid"} {
			if fs.Changed(f) {
				return fmt.Errorf("%w: --self sets the targets itself; --%s does not apply", errUsage, f)
			}
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("%w: unexpected arguments %q with --self", errUsage, fs.Args())
		}
	case fs.Changed("self-targets"):
		return fmt.Errorf("%w: --self-targets applies only with --self", errUsage)
	case fs.Changed("self-spares"):
		return fmt.Errorf("%w: --self-spares applies only with --self", errUsage)
	case fs.Changed("self-pool-budget"), fs.Changed("self-max-connections"):
		return fmt.Errorf("%w: --self-pool-budget and --self-max-connections apply only with --self", errUsage)
	case fs.NArg() == 1 && *dsn == "":
		*dsn = fs.Arg(0)
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected arguments %q; give targets with --dsn and --compare", errUsage, fs.Args())
	}
	if *dsn == "" && !*self {
		fs.Usage()
		return fmt.Errorf("%w: --dsn is required", errUsage)
	}

	cfg := bench.Config{
		Tenants:        *tenants,
		ConnsPerTenant: *conns,
		HeavyConns:     *heavyConns,
		TenantPrefix:   *prefix,
		NewTenants:     *newTenants,
		Query:          *query,
		Duration:       *duration,
		Ramp:           *ramp,
		Rounds:         *rounds,
		Rate:           *rate,
		Concurrency:    *concurrency,
		ConnectTimeout: *connectTimeout,
		QueryTimeout:   *queryTimeout,
		NoWarmup:       *noWarmup,
	}
	if err := benchPositive(fs, "tenants", "conns-per-tenant", "heavy-conns", "rounds", "concurrency", "duration", "connect-timeout", "query-timeout"); err != nil {
		return err
	}
	var err error
	if cfg.Scenarios, err = benchScenarios(*scenarioNames, fs.Changed("scenario"), *storm, *newTenants); err != nil {
		return err
	}
	fairness := slices.Contains(cfg.Scenarios, bench.Fairness)
	if fs.Changed("heavy-conns") && !fairness {
		return fmt.Errorf("%w: --heavy-conns applies only with --scenario fairness", errUsage)
	}
	runFn, against := bench.Run, joinLabels
	if *self { // internal/testbed starts and stops everything
		var chosen []string // nil: the default
		if fs.Changed("self-targets") {
			if chosen, err = testbed.ParseTargets(*selfTargetNames, cfg.Scenarios); err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
		}
		if *selfPoolBudget < 0 || *selfMaxConns < 0 {
			return fmt.Errorf("%w: --self-pool-budget and --self-max-connections: want 0 or more", errUsage)
		}
		if *selfSpares < 0 {
			return fmt.Errorf("%w: --self-spares %d: want 0 or more", errUsage, *selfSpares)
		}
		// The routers are this executable run as `pgtenant serve`; in
		// cmd/pgtenant's tests, the test binary (see TestMain).
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("--self runs the routers with this executable: %w", err)
		}
		if fairness {
			fmt.Fprintf(stderr, "pgtenant bench: note: --self sizes Postgres, PgBouncer and the pools for --tenants x --conns-per-tenant "+
				"connections (%d x %d, and as many server connections per tenant); fairness's %d heavy connections come on top\n",
				cfg.Tenants, cfg.ConnsPerTenant, cfg.HeavyConns)
		}
		bed, err := testbed.Start(ctx, testbed.Options{
			Bench:          cfg,
			Targets:        chosen,
			Spares:         *selfSpares,
			PoolBudget:     *selfPoolBudget,
			MaxConnections: *selfMaxConns,
			Pgtenant:       exe,
			Notes:          stderr,
			Preflight: func(cfg bench.Config) uint64 {
				fl := checkFileLimit(stderr, cfg.MaxOpenConns())
				noteColdConcurrency(stderr, cfg)
				return fl.Soft
			},
		})
		if err != nil {
			return err
		}
		defer bed.Close()
		cfg.Targets, runFn = bed.Targets(), bed.Run
		against = func([]bench.Target) string { return bed.Against(cfg.Scenarios) }
	} else if cfg.Targets, err = benchTargets(append([]string{*dsn}, *compare...), *labels, *pids); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if !*self { // Preflight said these before anything started
		checkFileLimit(stderr, cfg.MaxOpenConns())
		noteColdConcurrency(stderr, cfg)
	}

	fmt.Fprintf(stderr, "pgtenant bench: %s against %s; %d round(s) of %v per scenario and target\n",
		joinScenarios(cfg.Scenarios), against(cfg.Targets), cfg.Rounds, cfg.Duration/time.Duration(cfg.Rounds))
	live := isTerminal(stderr)
	if live {
		cfg.Progress = func(p bench.Progress) { fmt.Fprint(stderr, "\r\x1b[K"+progressLine(p)) }
	}
	rep, runErr := runFn(ctx, cfg)
	if live {
		fmt.Fprint(stderr, "\r\x1b[K")
	}
	if rep == nil {
		return runErr
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	if *jsonPath != "" {
		if err := writeReportJSON(*jsonPath, rep); err != nil {
			return err
		}
	}
	if *htmlPath != "" {
		if err := writeReportHTML(*htmlPath, rep); err != nil {
			return err
		}
	}
	if runErr != nil {
		if ctx.Err() == nil {
			return runErr
		}
		fmt.Fprintln(stderr, "pgtenant bench: interrupted; the report is partial")
	}
	return nil
}

// benchPositive rejects zero or negative values of the named flags: their
// zero would silently mean the library's default.
func benchPositive(fs *pflag.FlagSet, names ...string) error {
	for _, n := range names {
		f := fs.Lookup(n)
		if v := f.Value.String(); strings.HasPrefix(v, "-") || v == "0" || v == "0s" {
			return fmt.Errorf("%w: --%s must be positive, not %s", errUsage, n, v)
		}
	}
	return nil
}

// benchTargets pairs DSNs with --label and --pid values.
func benchTargets(dsns, labels, pids []string) ([]bench.Target, error) {
	if len(labels) > len(dsns) {
		return nil, fmt.Errorf("%w: %d --label values for %d targets", errUsage, len(labels), len(dsns))
	}
	targets := make([]bench.Target, len(dsns))
	for i, d := range dsns {
		targets[i] = bench.Target{DSN: d, Label: fmt.Sprintf("target%d", i+1)}
		if i < len(labels) {
			targets[i].Label = labels[i]
		}
	}
	for _, p := range pids {
		label, num, named := strings.Cut(p, "=")
		if !named {
			num = label
		}
		pid, err := strconv.Atoi(num)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("%w: --pid %q: want PID or LABEL=PID", errUsage, p)
		}
		found := false
		for i := range targets {
			if !named || targets[i].Label == label {
				targets[i].PID, found = pid, true
			}
		}
		if !found {
			return nil, fmt.Errorf("%w: --pid %q: no target labelled %q", errUsage, p, label)
		}
	}
	return targets, nil
}

// benchScenarios turns --scenario, --new-conn-per-query and --new-tenants
// into the list of scenarios to run.
func benchScenarios(names []string, given, storm bool, newTenants int) ([]bench.Scenario, error) {
	var scs []bench.Scenario
	for _, n := range names {
		sc, err := bench.ParseScenario(strings.TrimSpace(n))
		if err != nil {
			return nil, fmt.Errorf("%w: --scenario: %w", errUsage, err)
		}
		if !slices.Contains(scs, sc) {
			scs = append(scs, sc)
		}
	}
	if !given {
		scs = []bench.Scenario{bench.Steady}
		if storm {
			scs = []bench.Scenario{bench.Storm}
		}
	}
	if storm && !slices.Contains(scs, bench.Storm) {
		scs = append(scs, bench.Storm)
	}
	if newTenants > 0 && !slices.Contains(scs, bench.Cold) {
		scs = append([]bench.Scenario{bench.Cold}, scs...)
	}
	if len(scs) == 0 {
		return nil, fmt.Errorf("%w: --scenario: no scenario given", errUsage)
	}
	return scs, nil
}

// checkFileLimit raises the open-file limit and says what it is, warning
// when it is lower than the run needs. It returns the limits it left.
func checkFileLimit(w io.Writer, conns int) bench.FileLimit {
	fl, err := bench.RaiseFileLimit()
	switch {
	case err != nil:
		fmt.Fprintf(w, "pgtenant bench: warning: cannot raise the open-file limit (soft %d, hard %d): %v\n", fl.Soft, fl.Hard, err)
	case fl.Raised():
		fmt.Fprintf(w, "pgtenant bench: raised the open-file limit from %d to %d (the hard limit)\n", fl.Before, fl.Soft)
	default:
		fmt.Fprintf(w, "pgtenant bench: open-file limit %d (hard limit %d)\n", fl.Soft, fl.Hard)
	}
	if need := uint64(conns) + 32; err == nil && need > fl.Soft {
		fmt.Fprintf(w, "pgtenant bench: warning: this run may hold %d connections but only %d files may be open; "+
			"connections beyond that fail as network errors. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower --tenants/--conns-per-tenant\n",
			conns, fl.Soft)
	}
	return fl
}

// noteColdConcurrency says when Cold cannot have --concurrency first
// connects in flight at once: it spreads its new tenants over the rounds,
// and a round with fewer new tenants than that has only as many in flight.
func noteColdConcurrency(w io.Writer, cfg bench.Config) {
	if !slices.Contains(cfg.Scenarios, bench.Cold) {
		return
	}
	n := cfg.NewTenants
	if n <= 0 {
		n = max(cfg.Tenants, 1)
	}
	rounds := max(1, min(max(cfg.Rounds, 1), n)) // as bench.Run does
	k := max(cfg.Concurrency, 1)
	if n >= k*rounds {
		return
	}
	per := strconv.Itoa(n / rounds)
	if n%rounds != 0 {
		per += "-" + strconv.Itoa(n/rounds+1)
	}
	fmt.Fprintf(w, "pgtenant bench: note: cold spreads %d new tenants per target over %d round(s), %s a round, so fewer than --concurrency %d "+
		"first connects are in flight at once; for %d at once in every round give --new-tenants %d (or fewer --rounds)\n",
		n, rounds, per, k, k, k*rounds)
}

func progressLine(p bench.Progress) string {
	sc := string(p.Scenario)
	if p.Scenario == bench.Scale {
		sc += fmt.Sprintf(" (%d tenants)", p.Tenants)
	}
	return fmt.Sprintf("%s round %d/%d %s: %s  open %d  connects %d  queries %d  errors %d  [%s]",
		sc, p.Round, p.Rounds, p.Target, p.Phase, p.Open, p.Connects, p.Queries, p.Errors, p.Elapsed.Round(time.Second))
}

func joinScenarios(scs []bench.Scenario) string {
	s := make([]string, len(scs))
	for i, sc := range scs {
		s[i] = string(sc)
	}
	return strings.Join(s, ", ")
}

func joinLabels(ts []bench.Target) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.Label
	}
	return strings.Join(s, " vs ")
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func writeReportJSON(path string, rep *bench.Report) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	return rep.WriteJSON(f)
}

func writeReportHTML(path string, rep *bench.Report) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	return bench.WriteHTML(f, rep)
}
