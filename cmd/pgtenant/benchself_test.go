package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/provision/local"
)

// asPgtenantEnv makes the test binary run as pgtenant: `bench --self` runs
// its routers as `os.Executable() serve --config ...`, and in a test that
// executable is this binary. TestBenchSelf sets the variable, the children
// inherit it, and instead of running the tests they run main. TestMain (run_test.go) checks it first.
const asPgtenantEnv = "PGTENANT_TEST_RUN_AS_PGTENANT"

// selfDirLine is where --self says it keeps its files.
var selfDirLine = regexp.MustCompile(`in (/\S*pgtenant-bench-self-\d+)`)

// TestBenchSelf runs `pgtenant bench --self` briefly: Postgres, the two
// PgBouncers and the two routers come up, every target answers without an
// error, Cold goes to the routers only, and everything is gone afterwards.
func TestBenchSelf(t *testing.T) {
	pgtest.CheckGoroutines(t)
	_, haveBouncer := bench.HavePgBouncer()
	if !haveBouncer {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("pgbouncer is not installed; CI installs it (scripts/install-deps.sh)")
		}
		t.Log("pgbouncer is not installed: checking the three targets without it")
	}
	t.Setenv(asPgtenantEnv, "1")
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var stdout, stderr syncBuf
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := run(ctx, []string{
		"bench", "--self", "--tenants", "2", "--conns-per-tenant", "2", "--duration", "1s", "--rounds", "1",
		"--new-tenants", "1", "--json", jsonPath,
	}, &stdout, &stderr)
	if err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); errors.Is(err, local.ErrNoPostgres) && !ci {
			t.Skipf("no PostgreSQL: %v", err)
		}
		t.Fatalf("bench --self: %v\nstderr:\n%s", err, stderr.String())
	}
	logs := stderr.String()
	if strings.Contains(logs, "warning:") {
		t.Errorf("stderr has warnings:\n%s", logs)
	}

	want := []string{selfDirect, selfBouncerSession, selfBouncerTx, selfRouter, selfRouterBouncer}
	wantRouters := []string{selfRouter, selfRouterBouncer}
	if !haveBouncer {
		want, wantRouters = []string{selfDirect, selfRouter}, []string{selfRouter}
		if !strings.Contains(logs, "pgbouncer is not installed") {
			t.Errorf("no note about the missing pgbouncer:\n%s", logs)
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	if len(rep.Scenarios) != 2 || rep.Scenarios[0].Name != bench.Cold || rep.Scenarios[1].Name != bench.Steady || rep.Partial {
		t.Fatalf("scenarios %+v, want cold then steady", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		labels := want
		if s.Name == bench.Cold {
			labels = wantRouters
		}
		var got []string
		for _, r := range s.Results {
			got = append(got, r.Target)
			if r.ErrorsTotal != 0 || r.Connects == 0 || r.Queries == 0 || len(r.Ratio) == 0 {
				t.Errorf("%s/%s: %d connects, %d queries, errors %v, ratio %v", s.Name, r.Target, r.Connects, r.Queries, r.Errors, r.Ratio)
			}
			// Every target but Postgres itself has a process to measure.
			if (r.Process == nil) != (r.Target == selfDirect) {
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

	// Nothing left: no directory, no process started from it (Postgres,
	// PgBouncer and the routers all name a file in it on their command line).
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr syncBuf
			err := run(context.Background(), append([]string{"bench", "--self"}, tt.args...), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("bench --self %v = %v, want %q", tt.args, err, tt.want)
			}
			if strings.Contains(stderr.String(), "starting Postgres") {
				t.Error("started Postgres before checking the flags")
			}
		})
	}
}

func TestColdApart(t *testing.T) {
	tests := []struct {
		in   []bench.Scenario
		want string
	}{
		{[]bench.Scenario{bench.Steady}, "[steady]"},
		{[]bench.Scenario{bench.Cold, bench.Steady, bench.Storm}, "[cold] [steady storm]"},
		{[]bench.Scenario{bench.Steady, bench.Cold, bench.Idle}, "[steady] [cold] [idle]"},
		{[]bench.Scenario{bench.Cold}, "[cold]"},
	}
	for _, tt := range tests {
		var parts []string
		for _, seg := range coldApart(tt.in) {
			s := make([]string, len(seg))
			for i, sc := range seg {
				s[i] = string(sc)
			}
			parts = append(parts, "["+strings.Join(s, " ")+"]")
		}
		if got := strings.Join(parts, " "); got != tt.want {
			t.Errorf("coldApart(%v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestReadyWriter(t *testing.T) {
	w := &readyWriter{addr: make(chan string, 1)}
	for _, chunk := range []string{"noise\npgtenant: rout", "ing tenants on 127.0.0.1:4", "321\n", "pgtenant: routing tenants on 1.2.3.4:5\n"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := <-w.addr; got != "127.0.0.1:4321" {
		t.Errorf("address %q, want 127.0.0.1:4321", got)
	}
	if len(w.addr) != 0 {
		t.Error("a second address was passed on")
	}
}
