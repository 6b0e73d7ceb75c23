package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/testbed"
	"github.com/pgtenant/pgtenant/router"
)

// These tests run `pgtenant bench --self` end to end through the command
// (flags, notes, the header line); the pieces of the test bed itself are
// tested in internal/testbed, its processes in internal/localproc.

// asPgtenantEnv makes the test binary run as pgtenant: `bench --self` runs
// its routers as `os.Executable() serve --config ...`, and in a test that
// executable is this binary. TestBenchSelf sets the variable, the children
// inherit it, and instead of running the tests they run main. TestMain
// (run_test.go) checks it first.
const asPgtenantEnv = "PGTENANT_TEST_RUN_AS_PGTENANT"

// selfDirLine is where --self says it keeps its files.
var selfDirLine = regexp.MustCompile(`in (/\S*pgtenant-bench-self-\d+)`)

// pooledLabels are the targets whose routers have a pool section.
var pooledLabels = []string{testbed.RouterPooledSession, testbed.RouterPooledTx}

// TestBenchSelf runs `pgtenant bench --self` briefly: Postgres, the two
// PgBouncers and the four routers come up, every target answers without an
// error, Cold goes to create-database and the routers only, and everything
// is gone afterwards. Without pgbouncer it checks the targets that do not
// need it; while the router takes no pool section (havePoolSection), the
// targets that are not pooled, chosen by name.
func TestBenchSelf(t *testing.T) {
	pgtest.CheckGoroutines(t)
	haveBouncer, havePool := checkPgBouncer(t), havePoolSection(t)
	var want, wantCold []string
	for _, l := range testbed.Labels() {
		if (!haveBouncer && (l == testbed.BouncerSession || l == testbed.BouncerTx || l == testbed.RouterBouncer)) ||
			(!havePool && slices.Contains(pooledLabels, l)) {
			continue
		}
		want = append(want, l)
		if strings.HasPrefix(l, testbed.Router) {
			wantCold = append(wantCold, l)
		}
	}
	wantCold = append([]string{testbed.CreateDatabase}, wantCold...)
	if !haveBouncer {
		t.Logf("pgbouncer is not installed: checking %s", strings.Join(want, ", "))
	}
	args := []string{"--tenants", "2", "--conns-per-tenant", "2", "--duration", "1s", "--rounds", "1", "--new-tenants", "1"}
	if !havePool {
		t.Logf("the router takes no pool section yet: leaving out %s (TestBenchSelfPooled skips)", strings.Join(pooledLabels, ", "))
		args = append(args, "--self-targets", strings.Join(want, ","))
	}
	rep, logs := runSelf(t, args...)

	if !haveBouncer && havePool && !strings.Contains(logs, "pgbouncer is not installed") {
		t.Errorf("no note about the missing pgbouncer:\n%s", logs)
	}
	if len(rep.Scenarios) != 2 || rep.Scenarios[0].Name != bench.Cold || rep.Scenarios[1].Name != bench.Steady || rep.Partial {
		t.Fatalf("scenarios %+v, want cold then steady", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		labels := want
		if s.Name == bench.Cold {
			labels = wantCold
		}
		var got []string
		for _, r := range s.Results {
			got = append(got, r.Target)
			if r.Target == testbed.CreateDatabase {
				continue // TestBenchSelfCold
			}
			if r.ErrorsTotal != 0 || r.Connects == 0 || r.Queries == 0 || len(r.Ratio) == 0 {
				t.Errorf("%s/%s: %d connects, %d queries, errors %v, ratio %v", s.Name, r.Target, r.Connects, r.Queries, r.Errors, r.Ratio)
			}
			// Every target but Postgres itself has a process to measure.
			if (r.Process == nil) != (r.Target == testbed.Direct) {
				t.Errorf("%s/%s: memory measured: %v", s.Name, r.Target, r.Process)
			}
			if s.Name == bench.Cold && (r.TTFQ == nil || r.TTFQ.Count != 1) {
				t.Errorf("cold/%s: time to first query %+v, want one new tenant", r.Target, r.TTFQ)
			}
		}
		if strings.Join(got, " ") != strings.Join(labels, " ") {
			t.Errorf("%s targets %q, want %q", s.Name, got, labels)
		}
	}
	checkSelfGone(t, logs)
}

// TestBenchSelfPooled runs every scenario but scale against the router
// and the two routers pooling their upstream connections: each pooled
// router says how it pools, and every target answers every query of
// every scenario (Cold's new tenants included) without an error. It skips
// while `pgtenant serve` rejects the pool section (router/config.go's
// pool:, added on another branch).
func TestBenchSelfPooled(t *testing.T) {
	pgtest.CheckGoroutines(t)
	if !havePoolSection(t) {
		t.Skip("pgtenant serve rejects the pool section (router/config.go has no pool: yet; another branch adds it): " +
			"router-pooled-session and router-pooled-tx cannot start")
	}
	targets := append([]string{testbed.Router}, pooledLabels...)
	rep, logs := runSelf(t, "--scenario", "cold,steady,storm,idle", "--new-tenants", "2", "--tenants", "2", "--conns-per-tenant", "2",
		"--duration", "2s", "--rounds", "1", "--self-targets", strings.Join(targets, ","))
	for _, want := range []string{
		testbed.RouterPooledSession + " on 127.0.0.1:", "pool.mode session, max_server_connections 68, max_per_tenant 2",
		testbed.RouterPooledTx + " on 127.0.0.1:", "pool.mode transaction, max_server_connections 68, max_per_tenant 2",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs)
		}
	}
	if len(rep.Scenarios) != 4 || rep.Partial {
		t.Fatalf("scenarios %+v, want cold, steady, storm, idle", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		want := targets
		if s.Name == bench.Cold {
			want = append([]string{testbed.CreateDatabase}, targets...)
		}
		var got []string
		for _, r := range s.Results {
			got = append(got, r.Target)
			if r.Target == testbed.CreateDatabase {
				continue
			}
			if r.ErrorsTotal != 0 || r.Connects == 0 || r.Queries == 0 || r.Process == nil {
				t.Errorf("%s/%s: %d connects, %d queries, errors %v, process %v", s.Name, r.Target, r.Connects, r.Queries, r.Errors, r.Process)
			}
			if s.Name == bench.Idle && r.HeldConns != 4 {
				t.Errorf("idle/%s: held %d connections, want 4", r.Target, r.HeldConns)
			}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s targets %q, want %q", s.Name, got, want)
		}
	}
	checkSelfGone(t, logs)
}

// havePoolSection reports whether `pgtenant serve` takes a pool section,
// which the pooled targets' routers are configured with: router/config.go
// gains it on another branch. The routers are this binary (asPgtenantEnv),
// so loading a configuration with one here is what their start-up does;
// internal/testbed's TestRouterConfigPooled checks the configuration the
// test bed writes itself.
func havePoolSection(t *testing.T) bool {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pool.yaml")
	if err := os.WriteFile(path, []byte("pool:\n  mode: transaction\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := router.LoadConfig(path)
	switch {
	case err == nil:
		return true
	case strings.Contains(err.Error(), "field pool not found"):
		return false
	}
	t.Fatalf("load a pool section: %v", err)
	return false
}

// TestBenchSelfCold runs cold alone: create-database comes first, creates
// a database per new tenant without an error, and the routers' figures are
// ratios to its own.
func TestBenchSelfCold(t *testing.T) {
	pgtest.CheckGoroutines(t)
	routers := []string{testbed.Router}
	if checkPgBouncer(t) {
		routers = append(routers, testbed.RouterBouncer)
	}
	rep, logs := runSelf(t, "--scenario", "cold", "--new-tenants", "2", "--concurrency", "2", "--rounds", "1",
		"--self-targets", strings.Join(routers, ","))
	if strings.Contains(logs, "note: cold spreads") {
		t.Errorf("2 new tenants at concurrency 2 in 1 round noted as less concurrent:\n%s", logs)
	}
	if want := "cold against " + testbed.CreateDatabase + " vs " + strings.Join(routers, " vs "); !strings.Contains(logs, want) {
		t.Errorf("stderr does not say %q:\n%s", want, logs)
	}
	if len(rep.Scenarios) != 1 || rep.Scenarios[0].Name != bench.Cold {
		t.Fatalf("scenarios %+v, want cold", rep.Scenarios)
	}
	s := rep.Scenarios[0]
	var got []string
	for _, r := range s.Results {
		got = append(got, r.Target)
	}
	if want := append([]string{testbed.CreateDatabase}, routers...); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("cold targets %q, want %q", got, want)
	}
	base := s.Results[0]
	if base.TTFQ == nil || base.TTFQ.Count != 2 || base.TTFQ.P50Ms <= 0 || base.TTFQ.MaxMs < base.TTFQ.P50Ms ||
		base.ElapsedMs <= 0 || base.ErrorsTotal != 0 || base.Connects != 0 || base.Process != nil {
		t.Errorf("%s: %+v, ttfq %+v", base.Target, base, base.TTFQ)
	}
	if base.Ratio["ttfq_p50_ms"] != 1 {
		t.Errorf("%s: ratio %v, want 1 for its own figures", base.Target, base.Ratio)
	}
	for _, r := range s.Results[1:] {
		if r.TTFQ == nil || r.TTFQ.Count != 2 || r.ErrorsTotal != 0 {
			t.Fatalf("%s: ttfq %+v, errors %v; want 2 new tenants, no error", r.Target, r.TTFQ, r.Errors)
		}
		for key, want := range map[string]float64{
			"ttfq_count":  1,
			"ttfq_p50_ms": r.TTFQ.P50Ms / base.TTFQ.P50Ms,
			"ttfq_max_ms": r.TTFQ.MaxMs / base.TTFQ.MaxMs,
			"elapsed_ms":  r.ElapsedMs / base.ElapsedMs,
		} {
			if got, ok := r.Ratio[key]; !ok || got != want {
				t.Errorf("%s: ratio[%s] = %v (%v), want %v", r.Target, key, got, ok, want)
			}
		}
		// Connects are the routers' own: create-database has none to be a ratio to.
		if _, ok := r.Ratio["connects"]; ok {
			t.Errorf("%s: a connects ratio to a target without connects", r.Target)
		}
	}
	checkSelfGone(t, logs)
}

// TestBenchSelfChosenTargets runs idle against two targets that need
// neither router nor the session PgBouncer: only the transaction PgBouncer
// comes up, and the router that creates the tenants is stopped before the
// run.
func TestBenchSelfChosenTargets(t *testing.T) {
	pgtest.CheckGoroutines(t)
	if !checkPgBouncer(t) {
		t.Skip("pgbouncer is not installed")
	}
	rep, logs := runSelf(t, "--scenario", "idle", "--tenants", "2", "--conns-per-tenant", "2", "--duration", "200ms", "--rounds", "1",
		"--self-targets", testbed.BouncerTx+","+testbed.Direct) // run in selfTargets order whatever the order given
	for _, want := range []string{"transaction pooling on", "stopping router: no router is among the targets", "idle against direct vs pgbouncer-transaction;"} {
		if !strings.Contains(logs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs)
		}
	}
	for _, unwanted := range []string{"session pooling", testbed.RouterBouncer, testbed.RouterPooledSession, testbed.RouterPooledTx} {
		if strings.Contains(logs, unwanted) {
			t.Errorf("stderr mentions %q, which was not chosen:\n%s", unwanted, logs)
		}
	}
	if len(rep.Scenarios) != 1 || len(rep.Scenarios[0].Results) != 2 {
		t.Fatalf("report %+v, want idle against two targets", rep)
	}
	for i, r := range rep.Scenarios[0].Results {
		if want := []string{testbed.Direct, testbed.BouncerTx}[i]; r.Target != want || r.HeldConns != 4 || r.Queries != 4 || r.ErrorsTotal != 0 {
			t.Errorf("result %d: %s held %d, %d queries, errors %v; want %s, 4, 4, none", i, r.Target, r.HeldConns, r.Queries, r.Errors, want)
		}
	}
	checkSelfGone(t, logs)
}

// checkPgBouncer reports whether pgbouncer is installed; under CI it must be.
func checkPgBouncer(t *testing.T) bool {
	t.Helper()
	_, ok := localproc.HavePgBouncer()
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); !ok && ci {
		t.Fatal("pgbouncer is not installed; CI installs it (scripts/install-deps.sh)")
	}
	return ok
}

// runSelf runs `pgtenant bench --self args...` and returns its JSON report
// and its standard error, which must have no warning. It skips t when no
// PostgreSQL is installed, except under CI.
func runSelf(t *testing.T, args ...string) (bench.Report, string) {
	t.Helper()
	t.Setenv(asPgtenantEnv, "1")
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr syncBuf
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := run(ctx, append([]string{"bench", "--self", "--json", jsonPath}, args...), &stdout, &stderr)
	if err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); errors.Is(err, localproc.ErrNoPostgres) && !ci {
			t.Skipf("no PostgreSQL: %v", err)
		}
		t.Fatalf("bench --self: %v\nstderr:\n%s", err, stderr.String())
	}
	logs := stderr.String()
	if strings.Contains(logs, "warning:") {
		t.Errorf("stderr has warnings:\n%s", logs)
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	t.Logf("\n%s", stdout.String())
	return rep, logs
}

// checkSelfGone checks that nothing of the --self run whose standard error
// is logs is left: no directory, no process started from it (Postgres,
// PgBouncer and the routers all name a file in it on their command line).
func checkSelfGone(t *testing.T, logs string) {
	t.Helper()
	m := selfDirLine.FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("stderr does not name the directory:\n%s", logs)
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("%s is still there (%v)", m[1], err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), m[1]) {
			t.Errorf("process %s is still running: %q", filepath.Base(filepath.Dir(p)), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

func TestBenchSelfFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"dsn", []string{"--dsn", "x"}, "--dsn does not apply"},
		{"compare", []string{"--compare", "x"}, "--compare does not apply"},
		{"pid", []string{"--pid", "12"}, "--pid does not apply"},
		{"stray argument", []string{"x"}, "unexpected arguments"},
		{"invalid config", []string{"--rate", "-1"}, "rate must not be negative"},
		{"unknown target", []string{"--self-targets", "direct,bouncer"}, `unknown target "bouncer"`},
		{"cold without a router", []string{"--self-targets", "direct", "--new-tenants", "3"}, "choose a router too"},
		{"unknown pooled target", []string{"--self-targets", "router-pooled-transaction"}, `unknown target "router-pooled-transaction"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuf
			err := run(context.Background(), append([]string{"bench", "--self"}, tt.args...), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("bench --self %v = %v, want %q", tt.args, err, tt.want)
			}
			// Flag mistakes are usage errors; a bad run configuration is not.
			if got, want := errors.Is(err, errUsage), tt.name != "invalid config"; got != want {
				t.Errorf("bench --self %v = %v: usage error %v, want %v", tt.args, err, got, want)
			}
			if strings.Contains(stderr.String(), "starting Postgres") {
				t.Error("started Postgres before checking the flags")
			}
		})
	}
}
