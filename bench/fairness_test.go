package bench_test

import (
	"bytes"
	"io"
	"math"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestFairness runs the fairness scenario against two databases of the
// cluster, interleaved in rounds, and checks that both steps report both
// groups of clients apart, the small tenants' p99 against their p99 alone,
// the JSON shape, the table and the HTML page.
func TestFairness(t *testing.T) {
	pgtest.CheckGoroutines(t)
	var (
		mu    sync.Mutex
		named = map[bench.Scenario]bool{}
	)
	rep := runBench(t, bench.Config{
		Targets:        []bench.Target{{Label: "direct", DSN: directDSN(t)}, {Label: "other", DSN: directDSN(t)}},
		Scenarios:      []bench.Scenario{bench.Fairness},
		Tenants:        3,
		ConnsPerTenant: 2,
		HeavyConns:     6,
		Duration:       400 * time.Millisecond,
		Rounds:         2,
		Ramp:           20 * time.Millisecond,
		Concurrency:    4,
		Progress: func(p bench.Progress) {
			mu.Lock()
			named[p.Scenario] = true
			mu.Unlock()
		},
		ProgressInterval: 10 * time.Millisecond,
	})
	if len(rep.Scenarios) != 2 {
		t.Fatalf("got %d scenarios, want fairness-alone and fairness", len(rep.Scenarios))
	}
	alone, both := scenario(t, rep, 0, bench.FairnessAlone), scenario(t, rep, 1, bench.Fairness)
	if alone.Tenants != 2 || alone.ConnsPerTenant != 2 || alone.HeavyConns != 0 || alone.Rounds != 2 || alone.Rate != 0 {
		t.Errorf("fairness-alone parameters: %+v", alone)
	}
	if both.Tenants != 3 || both.ConnsPerTenant != 2 || both.HeavyConns != 6 || both.Rounds != 2 {
		t.Errorf("fairness parameters: %+v", both)
	}
	for _, label := range []string{"direct", "other"} {
		a, b := result(t, alone, label), result(t, both, label)
		for _, r := range []bench.Result{a, b} {
			checkSane(t, r)
			g := r.Groups
			if g == nil {
				t.Fatalf("%s: no groups: %+v", label, r)
			}
			if g.SmallQueries == 0 || g.SmallQueryP50Ms <= 0 || g.SmallQueryP50Ms > g.SmallQueryP95Ms ||
				g.SmallQueryP95Ms > g.SmallQueryP99Ms || g.SmallQueryP99Ms > r.QueryMaxMs {
				t.Errorf("%s: small tenants' figures %+v (query max %v ms)", label, g, r.QueryMaxMs)
			}
			if g.SmallQueries+g.HeavyQueries != r.Queries || r.ErrorsTotal != 0 {
				t.Errorf("%s: %d small + %d heavy queries, %d in all, errors %v", label, g.SmallQueries, g.HeavyQueries, r.Queries, r.Errors)
			}
		}
		if a.HeldConns != 4 || a.Connects != 2*4 || a.HeavyQueries != 0 || a.HeavyQueriesPerSec != 0 || a.SmallP99VsAlone != 0 {
			t.Errorf("%s alone: held %d, %d connects, %d heavy queries, %v/s, vs alone %v; want 4, 8, none",
				label, a.HeldConns, a.Connects, a.HeavyQueries, a.HeavyQueriesPerSec, a.SmallP99VsAlone)
		}
		if b.HeldConns != 10 || b.Connects != 2*10 || b.HeavyQueries == 0 || b.HeavyQueryP50Ms <= 0 ||
			b.HeavyQueryP50Ms > b.HeavyQueryP99Ms || b.HeavyQueriesPerSec <= 0 {
			t.Errorf("%s with the heavy tenant: held %d, %d connects, heavy %+v; want 10, 20, heavy queries", label, b.HeldConns, b.Connects, b.Groups)
		}
		if want := b.SmallQueryP99Ms / a.SmallQueryP99Ms; math.Abs(b.SmallP99VsAlone-want) > 1e-9*want {
			t.Errorf("%s: small p99 vs alone %v, want %v", label, b.SmallP99VsAlone, want)
		}
	}
	mu.Lock()
	if !named[bench.FairnessAlone] || !named[bench.Fairness] {
		t.Errorf("Progress named the steps %v, want fairness-alone and fairness", named)
	}
	mu.Unlock()

	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	checkJSONShape(t, buf.Bytes())
	if !strings.Contains(buf.String(), `"small_p99_vs_alone"`) || !strings.Contains(buf.String(), `"heavy_conns": 6`) {
		t.Errorf("JSON lacks the groups:\n%s", buf.String())
	}

	buf.Reset()
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	table := buf.String()
	for _, want := range []string{
		"fairness-alone: 2 small tenants x 2 conns without the heavy one, 2 rounds of 200ms",
		"fairness: 2 small tenants x 2 conns + 1 heavy tenant x 6 conns, 2 rounds of 200ms",
		"small query p95 ms", "small query p99 ms", "small p99 with heavy / alone", "heavy query p99 ms", "heavy queries/s",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if aloneTable, _, _ := strings.Cut(table, "\nfairness:"); strings.Contains(aloneTable, "heavy q") {
		t.Errorf("fairness-alone shows heavy figures:\n%s", aloneTable)
	}
	t.Logf("\n%s", table)

	if err := bench.WriteHTML(io.Discard, rep); err != nil {
		t.Fatal(err)
	}
}

// TestFairnessOpensLikeSteady checks that the heavy tenant's clients are
// opened as steady's are: at most Concurrency attempts in flight, spread
// over Ramp.
func TestFairnessOpensLikeSteady(t *testing.T) {
	dsn := directDSN(t)
	tests := []struct {
		name        string
		concurrency int
		ramp        time.Duration
		check       func(t *testing.T, p *slowProxy)
	}{
		{
			name: "concurrency caps the attempts in flight", concurrency: 2,
			check: func(t *testing.T, p *slowProxy) {
				if p.maxWaiting > 2 {
					t.Errorf("%d connection attempts in flight at once, want at most 2", p.maxWaiting)
				}
			},
		},
		{
			name: "ramp spreads the opening", ramp: 300 * time.Millisecond,
			check: func(t *testing.T, p *slowProxy) {
				// Without the heavy tenant: 2 x 2 connections, then with
				// it 10, all spread over the ramp.
				if len(p.accepted) != 14 {
					t.Fatalf("%d connections, want 14", len(p.accepted))
				}
				if spread := p.accepted[13].Sub(p.accepted[4]); spread < 150*time.Millisecond {
					t.Errorf("fairness opened its 10 connections within %v, want them spread over the 300ms ramp", spread)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			p := startSlowProxy(t, dsn, 20*time.Millisecond)
			rep := runBench(t, bench.Config{
				Targets:        []bench.Target{{DSN: p.dsn}},
				Scenarios:      []bench.Scenario{bench.Fairness},
				Tenants:        3,
				ConnsPerTenant: 2,
				HeavyConns:     6,
				Duration:       100 * time.Millisecond,
				Rounds:         1,
				Ramp:           tt.ramp,
				Concurrency:    tt.concurrency,
				NoWarmup:       true,
			})
			if r := scenario(t, rep, 1, bench.Fairness).Results[0]; r.HeldConns != 10 || r.ErrorsTotal != 0 {
				t.Errorf("held %d, errors %v; want 10 held", r.HeldConns, r.Errors)
			}
			p.stop()
			tt.check(t, p)
		})
	}
}

// slowProxy relays connections to a Postgres server, each only after a
// delay, like a slow handshake; it records when it accepted each one and
// the most connections waiting out that delay at once.
type slowProxy struct {
	dsn  string // the server's DSN, pointing at the proxy
	stop func() // closes everything and waits for it; then the fields below are final

	mu         sync.Mutex
	waiting    int
	maxWaiting int         // guarded by mu
	accepted   []time.Time // guarded by mu
	conns      []net.Conn  // guarded by mu
}

// startSlowProxy starts a slowProxy on 127.0.0.1:0 in front of dsn's
// server, stopped in t.Cleanup at the latest.
func startSlowProxy(t *testing.T, dsn string, delay time.Duration) *slowProxy {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.Host = ln.Addr().String()
	p := &slowProxy{dsn: u.String()}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.accepted = append(p.accepted, time.Now())
			p.conns = append(p.conns, c)
			p.waiting++
			p.maxWaiting = max(p.maxWaiting, p.waiting)
			p.mu.Unlock()
			wg.Go(func() { p.relay(c, upstream, delay, done) })
		}
	})
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			close(done)
			_ = ln.Close()
			p.mu.Lock()
			for _, c := range p.conns {
				_ = c.Close()
			}
			p.mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(p.stop)
	return p
}

// relay waits out delay, then pumps bytes between c and upstream until
// either side hangs up.
func (p *slowProxy) relay(c net.Conn, upstream string, delay time.Duration, done <-chan struct{}) {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-done:
	}
	p.mu.Lock()
	p.waiting--
	p.mu.Unlock()
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		_ = c.Close()
		return
	}
	errc := make(chan error, 2)
	go pump(errc, up, c)
	go pump(errc, c, up)
	<-errc
	_ = c.Close()
	_ = up.Close()
	<-errc
}

func pump(errc chan<- error, dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	errc <- err
}
