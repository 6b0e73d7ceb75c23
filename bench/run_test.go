package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestSteadyAgainstComparedTargets runs the steady scenario against the
// cluster directly, against another database of it, and with a wrong
// password, interleaved in rounds, and checks the figures, the ratios, the
// JSON shape and the table.
func TestSteadyAgainstComparedTargets(t *testing.T) {
	pgtest.CheckGoroutines(t)
	a, b := directDSN(t), directDSN(t)
	var progress atomic.Int32
	rep := runBench(t, bench.Config{
		Targets: []bench.Target{
			{Label: "direct", DSN: a},
			{DSN: b}, // label defaults to target2
			{Label: "refused", DSN: wrongPasswordDSN(t, a)},
		},
		Tenants:          2,
		ConnsPerTenant:   2,
		Duration:         600 * time.Millisecond,
		Rounds:           2,
		Ramp:             50 * time.Millisecond,
		Progress:         func(bench.Progress) { progress.Add(1) },
		ProgressInterval: 20 * time.Millisecond,
	})
	if len(rep.Scenarios) != 1 {
		t.Fatalf("got %d scenarios, want 1", len(rep.Scenarios))
	}
	s := scenario(t, rep, 0, bench.Steady)
	if s.Tenants != 2 || s.ConnsPerTenant != 2 || s.Rounds != 2 || s.Query != "SELECT 1" || s.DurationMs != 600 {
		t.Errorf("scenario parameters: %+v", s)
	}
	if len(s.Results) != 3 || s.Results[0].Target != "direct" || s.Results[1].Target != "target2" {
		t.Fatalf("results %d, first %q %q", len(s.Results), s.Results[0].Target, s.Results[1].Target)
	}
	for _, label := range []string{"direct", "target2"} {
		r := result(t, s, label)
		checkSane(t, r)
		if r.Connects != 2*4 || r.HeldConns != 4 {
			t.Errorf("%s: %d connects, %d held; want 8 (2 rounds x 4), 4", label, r.Connects, r.HeldConns)
		}
		if r.Queries < 8 || r.ErrorsTotal != 0 {
			t.Errorf("%s: %d queries, errors %v", label, r.Queries, r.Errors)
		}
		if r.ElapsedMs < 600 || r.ElapsedMs > 5000 {
			t.Errorf("%s: elapsed %v ms, want about 600", label, r.ElapsedMs)
		}
		if want := float64(r.Queries) / (r.ElapsedMs / 1000); math.Abs(r.QueriesPerSec-want) > 1e-6*want {
			t.Errorf("%s: %v queries/s, want %v", label, r.QueriesPerSec, want)
		}
		if r.ConnectionsPerSec != 0 || r.TTFQ != nil || r.Process != nil {
			t.Errorf("%s: storm/cold/process figures in steady: %+v", label, r)
		}
	}
	refused := result(t, s, "refused")
	checkSane(t, refused)
	if refused.Errors["28P01"] == 0 || refused.Connects != 0 || refused.Queries != 0 {
		t.Errorf("wrong password: %d connects, %d queries, errors %v; want 28P01 counted", refused.Connects, refused.Queries, refused.Errors)
	}
	if progress.Load() == 0 {
		t.Error("Progress was never called")
	}

	// Ratios are each figure over the first target's, keyed by JSON name.
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	checkJSONShape(t, buf.Bytes())

	buf.Reset()
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	table := buf.String()
	for _, want := range []string{"steady: 2 tenants x 2 conns, 2 rounds of 300ms", "direct", "target2", "refused", "queries/s", "connect p99 ms", "  28P01", "x)"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "not-the-password") || strings.Contains(buf.String(), pgtest.Shared(t).AdminPassword()) {
		t.Error("table contains a password")
	}
	t.Logf("\n%s", table)
}

// checkJSONShape decodes a report generically and checks the documented
// shape: scenarios[].name/results[].target/ratio, every ratio computed.
func checkJSONShape(t *testing.T, b []byte) {
	t.Helper()
	var doc struct {
		Scenarios []struct {
			Name    string           `json:"name"`
			Results []map[string]any `json:"results"`
		} `json:"scenarios"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	required := []string{
		"target", "ratio", "elapsed_ms", "held_conns", "connects", "connect_p50_ms", "connect_p90_ms",
		"connect_p99_ms", "connect_max_ms", "connections_per_s", "queries", "query_p50_ms", "query_p90_ms",
		"query_p99_ms", "query_max_ms", "queries_per_s", "errors_total", "errors",
	}
	for _, s := range doc.Scenarios {
		if len(s.Results) == 0 {
			t.Fatalf("scenario %s has no results", s.Name)
		}
		base := s.Results[0]
		for _, r := range s.Results {
			for _, k := range required {
				if _, ok := r[k]; !ok {
					t.Errorf("%s/%v: no %q in %v", s.Name, r["target"], k, r)
				}
			}
			if _, ok := r["errors"].(map[string]any); !ok {
				t.Errorf("errors is %T, want an object", r["errors"])
			}
			ratio, ok := r["ratio"].(map[string]any)
			if !ok {
				t.Fatalf("ratio is %T, want an object", r["ratio"])
			}
			for k, v := range r {
				num, isNum := v.(float64)
				b, baseNum := base[k].(float64)
				if !isNum || !baseNum || b == 0 {
					if _, has := ratio[k]; has {
						t.Errorf("%s/%v: ratio[%q] without a non-zero baseline", s.Name, r["target"], k)
					}
					continue
				}
				got, has := ratio[k].(float64)
				if !has {
					t.Errorf("%s/%v: no ratio for %q", s.Name, r["target"], k)
					continue
				}
				if want := num / b; math.Abs(got-want) > 1e-9*math.Max(1, want) {
					t.Errorf("%s/%v: ratio[%q] = %v, want %v", s.Name, r["target"], k, got, want)
				}
			}
			for k := range ratio {
				if _, ok := r[k].(float64); !ok {
					t.Errorf("%s/%v: ratio[%q] names no figure", s.Name, r["target"], k)
				}
			}
		}
	}
}

func TestScenarios(t *testing.T) {
	dsn := directDSN(t)
	tests := []struct {
		name  string
		cfg   bench.Config
		check func(t *testing.T, rep *bench.Report)
	}{
		{
			name: "storm opens a connection per query",
			cfg:  bench.Config{Scenarios: []bench.Scenario{bench.Storm}, Tenants: 2, Duration: 500 * time.Millisecond},
			check: func(t *testing.T, rep *bench.Report) {
				r := scenario(t, rep, 0, bench.Storm).Results[0]
				if r.Connects < 4 || r.Queries < r.Connects-2 || r.Queries > r.Connects {
					t.Errorf("%d connects, %d queries; want about one query per connect", r.Connects, r.Queries)
				}
				if r.ConnectionsPerSec <= 0 || r.QueriesPerSec <= 0 || r.HeldConns != 0 {
					t.Errorf("connections/s %v, queries/s %v, held %d", r.ConnectionsPerSec, r.QueriesPerSec, r.HeldConns)
				}
			},
		},
		{
			name: "idle holds connections and probes each once",
			cfg: bench.Config{
				Scenarios: []bench.Scenario{bench.Idle}, Tenants: 2, ConnsPerTenant: 2,
				Duration: 200 * time.Millisecond, Rounds: 2,
			},
			check: func(t *testing.T, rep *bench.Report) {
				r := scenario(t, rep, 0, bench.Idle).Results[0]
				if r.HeldConns != 4 || r.Connects != 8 || r.Queries != 8 || r.QueriesPerSec != 0 {
					t.Errorf("held %d, %d connects, %d queries, %v/s; want 4, 8, 8 probes, 0", r.HeldConns, r.Connects, r.Queries, r.QueriesPerSec)
				}
				p := r.Process
				if p == nil || p.RSSBeforeKB <= 0 || p.RSSAfterKB <= 0 || p.ThreadsBefore <= 0 || p.ThreadsAfter <= 0 {
					t.Fatalf("process figures: %+v", p)
				}
				if math.Abs(p.RSSPerConnKB*4-p.RSSDeltaKB) > 1e-9*math.Max(1, math.Abs(p.RSSDeltaKB)) {
					t.Errorf("rss per conn %v kB, delta %v kB over 4 held", p.RSSPerConnKB, p.RSSDeltaKB)
				}
			},
		},
		{
			name: "scale steps the tenant count",
			cfg:  bench.Config{Scenarios: []bench.Scenario{bench.Scale}, Tenants: 3, Duration: 200 * time.Millisecond},
			check: func(t *testing.T, rep *bench.Report) {
				for i, n := range []int{1, 2, 3} {
					s := scenario(t, rep, i, bench.Scale)
					if r := s.Results[0]; s.Tenants != n || r.HeldConns != int64(n) || r.Queries == 0 {
						t.Errorf("step %d: %d tenants, held %d, %d queries; want %d tenants", i, s.Tenants, r.HeldConns, r.Queries, n)
					}
				}
			},
		},
		{
			name: "open loop runs at the given rate",
			cfg: bench.Config{
				Tenants: 2, ConnsPerTenant: 2, Rate: 100, Duration: time.Second, Rounds: 1,
				Query: "SELECT pg_sleep(0.001)",
			},
			check: func(t *testing.T, rep *bench.Report) {
				s := scenario(t, rep, 0, bench.Steady)
				r := s.Results[0]
				if s.Rate != 100 || r.Queries < 80 || r.Queries > 100 {
					t.Errorf("rate %v: %d queries in 1s, want about 100", s.Rate, r.Queries)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			cfg := tt.cfg
			cfg.Targets = []bench.Target{{Label: "direct", DSN: dsn, PID: os.Getpid()}}
			cfg.Rounds = max(cfg.Rounds, 1)
			rep := runBench(t, cfg)
			for _, s := range rep.Scenarios {
				for _, r := range s.Results {
					checkSane(t, r)
					if r.ErrorsTotal != 0 {
						t.Errorf("%s: errors %v", s.Name, r.Errors)
					}
				}
			}
			tt.check(t, rep)
		})
	}
}

// silentServer accepts connections and never answers, until t ends.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestErrorsAreCountedByClass(t *testing.T) {
	dsn := directDSN(t)
	// Only the silent server needs a short connect timeout: on a loaded
	// machine a real login can take longer than that.
	tests := []struct {
		name, dsn, query, class string
		connected               bool
		timeout                 time.Duration
	}{
		{"wrong password", wrongPasswordDSN(t, dsn), "", "28P01", false, 10 * time.Second},
		{"nothing listening", "postgres://u:p@" + closedPort(t) + "/db?sslmode=disable", "", bench.ErrClassNetwork, false, 10 * time.Second},
		{"server never answers", "postgres://u:p@" + silentServer(t) + "/db?sslmode=disable", "", bench.ErrClassTimeout, false, 100 * time.Millisecond},
		{"bad query", dsn, "SELEC 1", "42601", true, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			rep := runBench(t, bench.Config{
				Targets:        []bench.Target{{DSN: tt.dsn}},
				Query:          tt.query,
				Duration:       300 * time.Millisecond,
				Rounds:         1,
				ConnectTimeout: tt.timeout,
			})
			r := scenario(t, rep, 0, bench.Steady).Results[0]
			checkSane(t, r)
			if r.Errors[tt.class] == 0 || r.ErrorsTotal != r.Errors[tt.class] {
				t.Errorf("errors %v, want only %s", r.Errors, tt.class)
			}
			if (r.Connects > 0) != tt.connected || r.Queries != 0 {
				t.Errorf("%d connects, %d queries", r.Connects, r.Queries)
			}
		})
	}
}

// TestRunStopsWhenContextEnds interrupts a long run once queries flow and
// expects a prompt, partial report and no goroutine left behind.
func TestRunStopsWhenContextEnds(t *testing.T) {
	pgtest.CheckGoroutines(t)
	dsn := directDSN(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Now()
	rep, err := bench.Run(ctx, bench.Config{
		Targets:        []bench.Target{{DSN: dsn}, {DSN: dsn}},
		Tenants:        2,
		ConnsPerTenant: 2,
		Duration:       time.Hour,
		Progress: func(p bench.Progress) {
			if p.Phase == "run" && p.Queries > 0 {
				cancel()
			}
		},
		ProgressInterval: 10 * time.Millisecond,
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Errorf("Run took %v to stop", d)
	}
	if rep == nil || !rep.Partial || len(rep.Scenarios) != 1 {
		t.Fatalf("report %+v, want a partial one with the interrupted scenario", rep)
	}
	r := rep.Scenarios[0].Results[0]
	checkSane(t, r)
	if r.Queries == 0 || r.ErrorsTotal != 0 {
		t.Errorf("partial result: %d queries, errors %v (stopping is no error)", r.Queries, r.Errors)
	}
	var buf bytes.Buffer
	_ = rep.WriteTable(&buf)
	if !strings.Contains(buf.String(), "partial") {
		t.Errorf("table does not say it is partial:\n%s", buf.String())
	}
}

func TestConfigValidate(t *testing.T) {
	ok := bench.Target{DSN: "postgres://u:p@127.0.0.1:5432/db"}
	tests := []struct {
		name string
		cfg  bench.Config
		want string
	}{
		{"no target", bench.Config{}, "no target"},
		{"empty DSN", bench.Config{Targets: []bench.Target{{Label: "a"}}}, "empty DSN"},
		{"duplicate label", bench.Config{Targets: []bench.Target{{Label: "x", DSN: ok.DSN}, {Label: "x", DSN: ok.DSN}}}, "used twice"},
		{"default label taken", bench.Config{Targets: []bench.Target{{Label: "target2", DSN: ok.DSN}, ok}}, "used twice"},
		{"unknown scenario", bench.Config{Targets: []bench.Target{ok}, Scenarios: []bench.Scenario{"burst"}}, "unknown scenario"},
		{"negative tenants", bench.Config{Targets: []bench.Target{ok}, Tenants: -1}, "tenants must not be negative"},
		{"negative rate", bench.Config{Targets: []bench.Target{ok}, Rate: -5}, "rate"},
		{"negative heavy conns", bench.Config{Targets: []bench.Target{ok}, HeavyConns: -1}, "heavy conns must not be negative"},
		{"fairness without a small tenant", bench.Config{Targets: []bench.Target{ok}, Scenarios: []bench.Scenario{bench.Fairness}, Tenants: 1}, "at least 2 tenants"},
		{"fairness-alone is no scenario", bench.Config{Targets: []bench.Target{ok}, Scenarios: []bench.Scenario{bench.FairnessAlone}}, "unknown scenario"},
		{"cold hook outside cold", bench.Config{Targets: []bench.Target{{Label: "h", Cold: func(context.Context, string) error { return nil }}}}, "cold scenario only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
			if rep, err := bench.Run(context.Background(), tt.cfg); err == nil || rep != nil {
				t.Fatalf("Run = %v, %v; want no report and an error", rep, err)
			}
		})
	}
	if err := (&bench.Config{Targets: []bench.Target{ok}}).Validate(); err != nil {
		t.Fatalf("Validate of a minimal config: %v", err)
	}
}

func TestBadDSNErrorHidesPassword(t *testing.T) {
	tests := []struct{ name, dsn string }{
		{"bad port", "postgres://u:s3cret-pw@127.0.0.1:notaport/db"},
		{"bad template port", "postgres://{tenant}:s3cret-pw@127.0.0.1:notaport/db"},
		{"unknown sslmode", "host=127.0.0.1 user=u password=s3cret-pw sslmode=sometimes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bench.Run(context.Background(), bench.Config{Targets: []bench.Target{{Label: "x", DSN: tt.dsn}}})
			if err == nil {
				t.Fatal("Run accepted a bad DSN")
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
}

func TestBadPID(t *testing.T) {
	_, err := bench.Run(context.Background(), bench.Config{Targets: []bench.Target{{DSN: "postgres://u@127.0.0.1/db", PID: 1 << 30}}})
	if err == nil || !strings.Contains(err.Error(), "PID") {
		t.Fatalf("Run with a PID that does not exist = %v", err)
	}
}

// barrierHook is a Target.Cold hook that holds every call until n calls
// are in flight at once, so a run whose Cold is less concurrent than n
// stalls (and times out) instead of passing. It fails its first call with
// failCode, if set.
type barrierHook struct {
	n        int
	failCode string
	all      chan struct{} // closed when n calls are in flight

	mu      sync.Mutex
	tenants []string // guarded by mu; every call's, in order
}

func newBarrierHook(n int, failCode string) *barrierHook {
	return &barrierHook{n: n, failCode: failCode, all: make(chan struct{})}
}

func (h *barrierHook) cold(ctx context.Context, tenant string) error {
	h.mu.Lock()
	h.tenants = append(h.tenants, tenant)
	first := len(h.tenants) == 1
	if len(h.tenants) == h.n { // no call returns before this one: n in flight
		close(h.all)
	}
	h.mu.Unlock()
	select {
	case <-h.all:
	case <-ctx.Done():
		return ctx.Err()
	}
	if first && h.failCode != "" {
		return &pgconn.PgError{Code: h.failCode}
	}
	return nil
}

// TestColdHook runs Cold against two targets that have only a Cold hook:
// each new tenant gets one call with an ID of its own, Concurrency calls
// run at once, the hook's time is the time to first query (with ratios to
// the first target), and its failures are counted by class.
func TestColdHook(t *testing.T) {
	pgtest.CheckGoroutines(t)
	const k = 8
	base, other := newBarrierHook(k, ""), newBarrierHook(k, "53300")
	rep := runBench(t, bench.Config{
		Targets: []bench.Target{
			{Label: "create-database", Cold: base.cold},
			{Label: "router", Cold: other.cold},
		},
		Scenarios:   []bench.Scenario{bench.Cold},
		NewTenants:  k,
		Concurrency: k,
		Rounds:      1,
	})
	s := scenario(t, rep, 0, bench.Cold)
	if s.Tenants != k || s.Rounds != 1 || len(s.Results) != 2 || s.Results[0].Target != "create-database" {
		t.Fatalf("cold: %+v", s)
	}
	seen := map[string]bool{}
	for _, h := range []*barrierHook{base, other} {
		for _, tn := range h.tenants {
			if seen[tn] || !strings.HasPrefix(tn, "bench_new_") {
				t.Errorf("tenant %q: reused or misnamed", tn)
			}
			seen[tn] = true
		}
	}
	if len(seen) != 2*k {
		t.Errorf("hooks saw %d tenants, want %d", len(seen), 2*k)
	}
	b, o := result(t, s, "create-database"), result(t, s, "router")
	for _, r := range []bench.Result{b, o} {
		checkSane(t, r)
		if r.Connects != 0 || r.Queries != 0 || r.TTFQ == nil || r.TTFQ.P50Ms <= 0 || r.ElapsedMs <= 0 {
			t.Errorf("%s: %d connects, %d queries, ttfq %+v, elapsed %v", r.Target, r.Connects, r.Queries, r.TTFQ, r.ElapsedMs)
		}
	}
	if b.TTFQ.Count != k || b.ErrorsTotal != 0 {
		t.Errorf("create-database: %d first queries, errors %v; want %d, none", b.TTFQ.Count, b.Errors, k)
	}
	if o.TTFQ.Count != k-1 || o.Errors["53300"] != 1 || o.ErrorsTotal != 1 {
		t.Errorf("router: %d first queries, errors %v; want %d and one 53300", o.TTFQ.Count, o.Errors, k-1)
	}
	if got, want := o.Ratio["ttfq_count"], float64(k-1)/k; got != want {
		t.Errorf("router ttfq_count ratio %v, want %v", got, want)
	}
	if got, want := o.Ratio["ttfq_p50_ms"], o.TTFQ.P50Ms/b.TTFQ.P50Ms; got != want {
		t.Errorf("router ttfq_p50_ms ratio %v, want %v", got, want)
	}
}
