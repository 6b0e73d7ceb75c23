package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestBench runs `pgtenant bench` briefly against the shared cluster, with
// the same database as --compare, and reads back its table and JSON.
func TestBench(t *testing.T) {
	pgtest.CheckGoroutines(t)
	c := pgtest.Shared(t)
	dsn := c.AdminDSN(pgtest.CreateDB(t, c))
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr syncBuf
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, []string{
		"bench", "--dsn", dsn, "--label", "direct", "--compare", dsn, "--label", "again",
		"--tenants", "2", "--conns-per-tenant", "2", "--duration", "400ms", "--rounds", "2",
		"--new-conn-per-query", "--scenario", "steady", "--pid", "again=" + strconv.Itoa(os.Getpid()),
		"--json", jsonPath,
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"steady: 2 tenants x 2 conns, 2 rounds of 200ms", "storm:", "direct", "again", "queries/s", "connections/s", "rss per conn kB"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "open-file limit") {
		t.Errorf("stderr does not tell the open-file limit:\n%s", stderr.String())
	}
	if strings.Contains(out+stderr.String(), c.AdminPassword()) {
		t.Error("output contains the password")
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	if len(rep.Scenarios) != 2 || rep.Scenarios[0].Name != bench.Steady || rep.Scenarios[1].Name != bench.Storm {
		t.Fatalf("scenarios %+v, want steady then storm", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		if len(s.Results) != 2 || s.Results[0].Target != "direct" || s.Results[1].Target != "again" {
			t.Fatalf("%s results: %+v", s.Name, s.Results)
		}
		for _, r := range s.Results {
			if r.Queries == 0 || r.Connects == 0 || r.ErrorsTotal != 0 || r.Ratio["queries"] == 0 {
				t.Errorf("%s/%s: %d queries, %d connects, errors %v, ratio %v", s.Name, r.Target, r.Queries, r.Connects, r.Errors, r.Ratio)
			}
		}
		if s.Results[0].Process != nil || s.Results[1].Process == nil {
			t.Errorf("%s: --pid again=PID measured %v and %v", s.Name, s.Results[0].Process, s.Results[1].Process)
		}
	}
}

func TestBenchHelpDocumentsEveryFlag(t *testing.T) {
	var stdout, stderr syncBuf
	err := run(context.Background(), []string{"bench", "--help"}, &stdout, &stderr)
	if !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("bench --help = %v, want pflag.ErrHelp", err)
	}
	help := stderr.String()
	for _, flag := range []string{
		"--dsn", "--compare", "--label", "--tenants", "--conns-per-tenant", "--tenant-prefix", "--query",
		"--duration", "--ramp", "--rounds", "--new-conn-per-query", "--new-tenants", "--rate", "--scenario",
		"--concurrency", "--connect-timeout", "--query-timeout", "--no-warmup", "--pid", "--json", "--report",
		"--self", "--self-targets", "--heavy-conns",
	} {
		if !strings.Contains(help, flag+" ") && !strings.Contains(help, flag+"[") {
			t.Errorf("help does not document %s:\n%s", flag, help)
		}
	}
	if !strings.Contains(help, "{tenant}") {
		t.Error("help does not explain {tenant}")
	}
}

func TestBenchFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no target", nil, "--dsn is required"},
		{"too many labels", []string{"--dsn", "x", "--label", "a", "--label", "b"}, "2 --label values for 1 targets"},
		{"pid for unknown label", []string{"--dsn", "x", "--pid", "router=12"}, `no target labelled "router"`},
		{"bad pid", []string{"--dsn", "x", "--pid", "abc"}, "want PID or LABEL=PID"},
		{"unknown scenario", []string{"--dsn", "x", "--scenario", "burst"}, "unknown scenario"},
		{"zero rounds", []string{"--dsn", "x", "--rounds", "0"}, "--rounds must be positive"},
		{"negative rate", []string{"--dsn", "x", "--rate", "-1"}, "rate must not be negative"},
		{"stray argument", []string{"--dsn", "x", "y"}, "unexpected arguments"},
		{"duplicate labels", []string{"--dsn", "x", "--compare", "y", "--label", "a", "--label", "a"}, "used twice"},
		{"self-targets without self", []string{"--dsn", "x", "--self-targets", "router"}, "--self-targets applies only with --self"},
		{"heavy-conns without fairness", []string{"--dsn", "x", "--heavy-conns", "10"}, "--heavy-conns applies only with --scenario fairness"},
		{"zero heavy-conns", []string{"--dsn", "x", "--scenario", "fairness", "--heavy-conns", "0"}, "--heavy-conns must be positive"},
		{"fairness with one tenant", []string{"--dsn", "x", "--scenario", "fairness", "--tenants", "1"}, "at least 2 tenants"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuf
			err := run(context.Background(), append([]string{"bench"}, tt.args...), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("bench %v = %v, want %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestBenchScenarios(t *testing.T) {
	tests := []struct {
		name       string
		names      []string
		given      bool
		storm      bool
		newTenants int
		want       string
	}{
		{"default", nil, false, false, 0, "steady"},
		{"storm flag", nil, false, true, 0, "storm"},
		{"cold runs first", nil, false, false, 5, "cold, steady"},
		{"storm and cold", nil, false, true, 5, "cold, storm"},
		{"explicit list", []string{"idle", "scale"}, true, false, 0, "idle, scale"},
		{"explicit list plus flags", []string{"idle"}, true, true, 3, "cold, idle, storm"},
		{"duplicates dropped", []string{"steady", "steady"}, true, false, 0, "steady"},
		{"fairness", []string{"fairness"}, true, false, 0, "fairness"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scs, err := benchScenarios(tt.names, tt.given, tt.storm, tt.newTenants)
			if err != nil {
				t.Fatal(err)
			}
			if got := joinScenarios(scs); got != tt.want {
				t.Errorf("scenarios %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBenchTargets(t *testing.T) {
	ts, err := benchTargets([]string{"a", "b", "c"}, []string{"direct", "router"}, []string{"router=42", "7"})
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, tg := range ts {
		got += tg.Label + ":" + strconv.Itoa(tg.PID) + " "
	}
	// A bare PID applies to every target; later values win.
	if want := "direct:7 router:7 target3:7 "; got != want {
		t.Errorf("targets %q, want %q", got, want)
	}
	ts, _ = benchTargets([]string{"a", "b"}, []string{"direct", "router"}, []string{"router=42"})
	if ts[0].PID != 0 || ts[1].PID != 42 {
		t.Errorf("LABEL=PID set %d, %d; want 0, 42", ts[0].PID, ts[1].PID)
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine(bench.Progress{
		Scenario: bench.Scale, Tenants: 8, Target: "router", Round: 2, Rounds: 3, Phase: "run",
		Open: 80, Connects: 160, Queries: 12345, Errors: 1, Elapsed: 61500 * time.Millisecond,
	})
	want := "scale (8 tenants) round 2/3 router: run  open 80  connects 160  queries 12345  errors 1  [1m2s]"
	if got != want {
		t.Errorf("progress line\n got %q\nwant %q", got, want)
	}
}

func TestNoteColdConcurrency(t *testing.T) {
	cold := []bench.Scenario{bench.Cold, bench.Steady}
	tests := []struct {
		name string
		cfg  bench.Config
		want string // empty: no note
	}{
		{"enough per round", bench.Config{Scenarios: cold, NewTenants: 20, Rounds: 2, Concurrency: 10}, ""},
		{"half a round", bench.Config{Scenarios: cold, NewTenants: 10, Rounds: 2, Concurrency: 10},
			"cold spreads 10 new tenants per target over 2 round(s), 5 a round, so fewer than --concurrency 10 first connects are in flight at once; " +
				"for 10 at once in every round give --new-tenants 20"},
		{"uneven rounds", bench.Config{Scenarios: cold, NewTenants: 7, Rounds: 2, Concurrency: 4}, "3-4 a round"},
		{"uneven but enough", bench.Config{Scenarios: cold, NewTenants: 5, Rounds: 2, Concurrency: 2}, ""},
		{"no more rounds than tenants", bench.Config{Scenarios: cold, NewTenants: 2, Rounds: 3, Concurrency: 2}, "over 2 round(s), 1 a round"},
		{"new tenants default to tenants", bench.Config{Scenarios: cold, Tenants: 4, Rounds: 1, Concurrency: 8}, "4 new tenants"},
		{"no cold", bench.Config{Scenarios: []bench.Scenario{bench.Steady}, Rounds: 3, Concurrency: 100}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			noteColdConcurrency(&b, tt.cfg)
			if got := b.String(); (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("note %q, want %q", got, tt.want)
			}
		})
	}
}
