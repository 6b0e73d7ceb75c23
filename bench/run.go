package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	randv2 "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
)

// Error classes for failures that carry no SQLSTATE.
const (
	// ErrClassNetwork counts connects and queries that failed without a
	// server error: refused or reset connections, TLS failures, EOF.
	ErrClassNetwork = "network"
	// ErrClassTimeout counts connects and queries that ran out of
	// ConnectTimeout or QueryTimeout.
	ErrClassTimeout = "timeout"
)

// Run drives cfg.Targets through cfg's scenarios, each scenario against
// every target in turn, interleaved in rounds, and reports what it
// measured. It blocks until done or until ctx ends; in that case it returns
// the partial report (Report.Partial set) together with ctx.Err(). Every
// goroutine it starts has ended and every connection it opened is closed
// when it returns. Run never exits the process and leaves the open-file
// limit alone (see RaiseFileLimit).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	stop := r.startProgress()
	defer stop()

	rep := &Report{}
	warmed := cfg.NoWarmup
	for _, st := range r.steps() {
		if ctx.Err() != nil {
			break
		}
		if st.sc != Cold && !warmed {
			r.warmup(ctx)
			warmed = true
			if ctx.Err() != nil {
				break
			}
		}
		rounds := r.cfg.rounds()
		if st.sc == Cold {
			rounds = max(1, min(rounds, st.tenants))
		}
		accs := make([]*acc, len(r.targets))
		for i := range accs {
			accs[i] = newAcc()
		}
	rounds:
		for round := range rounds {
			for ti, t := range r.targets {
				if ctx.Err() != nil {
					break rounds
				}
				r.enter(st, t.label, round, rounds, accs[ti])
				smp := r.startSampler(accs[ti], round, sampleEvery(r.cfg.duration()/time.Duration(rounds)))
				r.runRound(ctx, st, round, rounds, t, accs[ti])
				smp.stop()
				accs[ti].rounds++
			}
		}
		if sr := r.scenarioReport(st, rounds, accs, rep.Scenarios); len(sr.Results) > 0 {
			rep.Scenarios = append(rep.Scenarios, sr)
		}
	}
	if err := ctx.Err(); err != nil {
		rep.Partial = true
		return rep, err
	}
	return rep, nil
}

// runner is one Run.
type runner struct {
	cfg     Config
	targets []*target
	runID   string       // makes Cold's tenant IDs unique across runs
	coldSeq atomic.Int64 // and within this one
	start   time.Time
	open    atomic.Int64 // connections open right now

	mu struct {
		sync.Mutex
		status Progress // guarded by mu; counts come from cur
		cur    *acc     // guarded by mu
	}
}

// target is a Target with its connection configs parsed.
type target struct {
	label string
	dsn   string
	pid   int
	templ bool
	cfgs  []*pgconn.Config                               // per tenant if templ, else just one; none without a DSN
	cold  func(ctx context.Context, tenant string) error // Target.Cold
}

// config returns the connection config of tenant i.
func (t *target) config(i int) *pgconn.Config {
	if !t.templ {
		return t.cfgs[0]
	}
	return t.cfgs[i]
}

// parse returns the connection config for tenant. ParseConfig's errors
// mask the password.
func (t *target) parse(tenant string) (*pgconn.Config, error) {
	cc, err := pgconn.ParseConfig(strings.ReplaceAll(t.dsn, TenantPlaceholder, tenant))
	if err != nil {
		return nil, fmt.Errorf("bench: target %s: %w", t.label, err)
	}
	return cc, nil
}

func newRunner(cfg Config) (*runner, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // never fails
	r := &runner{cfg: cfg, runID: hex.EncodeToString(b), start: time.Now()}
	n := cfg.tenants()
	for i, tc := range cfg.Targets {
		t := &target{label: cfg.label(i), dsn: tc.DSN, pid: tc.PID, templ: tc.Templated(), cold: tc.Cold}
		count := 1
		switch {
		case t.templ:
			count = n
		case strings.TrimSpace(t.dsn) == "":
			count = 0 // a Cold hook only (Validate)
		}
		for j := range count {
			cc, err := t.parse(r.tenantID(j))
			if err != nil {
				return nil, err
			}
			t.cfgs = append(t.cfgs, cc)
		}
		if t.pid != 0 {
			if _, err := readProcStatus(t.pid); err != nil {
				return nil, fmt.Errorf("bench: target %s: PID %d: %w", t.label, t.pid, err)
			}
		}
		r.targets = append(r.targets, t)
	}
	return r, nil
}

func (r *runner) tenantID(i int) string { return r.cfg.tenantPrefix() + strconv.Itoa(i) }

// newTenantID returns a tenant ID that no run has used yet.
func (r *runner) newTenantID() string {
	return r.cfg.tenantPrefix() + "new_" + r.runID + "_" + strconv.FormatInt(r.coldSeq.Add(1), 10)
}

// step is one scenario at one tenant count (Scale has several), or one of
// Fairness's two steps.
type step struct {
	sc      Scenario
	tenants int  // Cold: new tenants per target
	alone   bool // Fairness: the small tenants without the heavy one
}

// name is the step's name in reports.
func (st step) name() Scenario {
	if st.alone {
		return FairnessAlone
	}
	return st.sc
}

func (r *runner) steps() []step {
	var steps []step
	n := r.cfg.tenants()
	for _, sc := range r.cfg.scenarios() {
		switch sc {
		case Scale:
			for k := 1; k < n; k *= 2 {
				steps = append(steps, step{sc: Scale, tenants: k})
			}
			steps = append(steps, step{sc: Scale, tenants: n})
		case Cold:
			steps = append(steps, step{sc: Cold, tenants: r.cfg.newTenants()})
		case Fairness:
			steps = append(steps, step{sc: Fairness, tenants: n - 1, alone: true}, step{sc: Fairness, tenants: n})
		default:
			steps = append(steps, step{sc: sc, tenants: n})
		}
	}
	return steps
}

// runRound runs one round of st against t.
func (r *runner) runRound(ctx context.Context, st step, round, rounds int, t *target, a *acc) {
	window := r.cfg.duration() / time.Duration(rounds)
	switch st.sc {
	case Steady, Scale:
		r.steady(ctx, t, st.tenants, a, window)
	case Storm:
		r.storm(ctx, t, st.tenants, a, window)
	case Idle:
		r.idle(ctx, t, st.tenants, a, window)
	case Fairness:
		r.fairness(ctx, t, st.alone, a, window)
	case Cold:
		k := st.tenants / rounds
		if round < st.tenants%rounds {
			k++
		}
		r.cold(ctx, t, k, a)
	}
}

// seat is one client of a scenario: the connection config of its tenant,
// and for Fairness the group histogram its query latencies also go to.
type seat struct {
	cc  *pgconn.Config
	grp *Histogram // nil: none
}

// seats returns n x per seats for tenants first .. first+n-1, seat i
// belonging to tenant first + i%n.
func (t *target) seats(first, n, per int, grp *Histogram) []seat {
	s := make([]seat, n*per)
	for i := range s {
		s[i] = seat{cc: t.config(first + i%n), grp: grp}
	}
	return s
}

// steady opens tenants x ConnsPerTenant connections, runs the query loop
// on all of them for window, and closes them.
func (r *runner) steady(ctx context.Context, t *target, tenants int, a *acc, window time.Duration) {
	r.hold(ctx, t, t.seats(0, tenants, r.cfg.connsPerTenant(), nil), a, window, true)
}

// fairness runs steady's loop, always closed, for the small tenants
// (1 .. Tenants-1, ConnsPerTenant clients each) and, unless alone, the
// heavy tenant 0's HeavyConns clients; each group's query latencies also
// go to its own histogram.
func (r *runner) fairness(ctx context.Context, t *target, alone bool, a *acc, window time.Duration) {
	seats := t.seats(1, r.cfg.tenants()-1, r.cfg.connsPerTenant(), &a.small)
	if !alone {
		seats = append(seats, t.seats(0, 1, r.cfg.heavyConns(), &a.heavy)...)
	}
	r.hold(ctx, t, seats, a, window, false)
}

// hold opens a connection per seat, runs the query loop on all of them for
// window (open-loop at Rate if openLoop and Rate is set), and closes them.
func (r *runner) hold(ctx context.Context, t *target, seats []seat, a *acc, window time.Duration, openLoop bool) {
	before, okBefore := r.proc(t)
	conns := make([]*pgconn.PgConn, len(seats))
	r.openAll(ctx, seats, conns, a)
	defer r.closeAll(conns)
	held := countOpen(conns)
	a.held = max(a.held, held)
	if ctx.Err() != nil {
		return
	}
	r.setPhase("run")
	start := time.Now()
	end := start.Add(window)
	var sched *schedule
	if openLoop {
		sched = r.schedule(start, end)
	}
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() { conns[i] = r.client(ctx, seats[i], conns[i], end, a, sched) })
	}
	wg.Wait()
	a.elapsed += time.Since(start)
	a.smp.end() // the timeline ends with the connections still held
	after, okAfter := r.proc(t)
	if okBefore && okAfter {
		a.proc.note(before, after, held)
	}
}

// client is one closed-loop (or, with sched, open-loop) client of steady
// and fairness: it runs the query on conn until end, reconnecting to s's
// tenant when conn breaks, and returns the connection it ends with (nil if
// none).
func (r *runner) client(ctx context.Context, s seat, conn *pgconn.PgConn, end time.Time, a *acc, sched *schedule) *pgconn.PgConn {
	var bo backoff
	for ctx.Err() == nil && time.Now().Before(end) {
		if conn == nil {
			c, err := r.connect(ctx, s.cc, a)
			if err != nil {
				if !bo.wait(ctx, end) {
					break
				}
				continue
			}
			conn = c
			bo.reset()
		}
		due := time.Now()
		if sched != nil {
			var ok bool
			if due, ok = sched.claim(); !ok || !sleepUntil(ctx, due) {
				break
			}
		}
		if err := r.query(ctx, conn, a, s.grp, due); err != nil && conn.IsClosed() {
			r.hangUp(conn)
			conn = nil
			if !bo.wait(ctx, end) {
				break
			}
		}
	}
	return conn
}

// storm runs tenants x ConnsPerTenant workers for window, each
// connecting, querying once and hanging up, over and over.
func (r *runner) storm(ctx context.Context, t *target, tenants int, a *acc, window time.Duration) {
	before, okBefore := r.proc(t)
	r.setPhase("run")
	start := time.Now()
	end := start.Add(window)
	sched := r.schedule(start, end)
	var wg sync.WaitGroup
	for i := range tenants * r.cfg.connsPerTenant() {
		cc := t.config(i % tenants)
		wg.Go(func() { r.stormWorker(ctx, cc, end, a, sched) })
	}
	wg.Wait()
	a.elapsed += time.Since(start)
	after, okAfter := r.proc(t)
	if okBefore && okAfter {
		a.proc.note(before, after, 0)
	}
}

func (r *runner) stormWorker(ctx context.Context, cc *pgconn.Config, end time.Time, a *acc, sched *schedule) {
	var bo backoff
	for ctx.Err() == nil && time.Now().Before(end) {
		var due time.Time
		if sched != nil {
			var ok bool
			if due, ok = sched.claim(); !ok || !sleepUntil(ctx, due) {
				return
			}
		}
		c, err := r.connect(ctx, cc, a)
		if err != nil {
			if !bo.wait(ctx, end) {
				return
			}
			continue
		}
		bo.reset()
		if sched == nil {
			due = time.Now()
		}
		_ = r.query(ctx, c, a, nil, due) // counted
		r.hangUp(c)
	}
}

// idle opens tenants x ConnsPerTenant connections, holds them for window,
// then runs the query once on each and closes them.
func (r *runner) idle(ctx context.Context, t *target, tenants int, a *acc, window time.Duration) {
	before, okBefore := r.proc(t)
	conns := make([]*pgconn.PgConn, tenants*r.cfg.connsPerTenant())
	r.openAll(ctx, t.seats(0, tenants, r.cfg.connsPerTenant(), nil), conns, a)
	defer r.closeAll(conns)
	held := countOpen(conns)
	a.held = max(a.held, held)
	if ctx.Err() != nil {
		return
	}
	r.setPhase("hold")
	start := time.Now()
	sleepUntil(ctx, start.Add(window))
	a.elapsed += time.Since(start)
	after, okAfter := r.proc(t)
	if okBefore && okAfter {
		a.proc.note(before, after, held)
	}
	r.setPhase("probe")
	g := r.limited()
	for i, c := range conns {
		if c == nil || ctx.Err() != nil {
			continue
		}
		g.Go(func() error {
			if err := r.query(ctx, c, a, nil, time.Now()); err != nil && c.IsClosed() {
				r.hangUp(c)
				conns[i] = nil
			}
			return nil
		})
	}
	_ = g.Wait()
	a.smp.end() // the timeline ends with the connections still held
}

// cold connects to k new tenants, Concurrency at a time, and records each
// one's time to first query; a target with a Cold hook calls it instead.
func (r *runner) cold(ctx context.Context, t *target, k int, a *acc) {
	before, okBefore := r.proc(t)
	r.setPhase("connect")
	g := r.limited()
	start := time.Now()
	for range k {
		if ctx.Err() != nil {
			break
		}
		if t.cold != nil {
			tenant := r.newTenantID()
			g.Go(func() error { r.coldHook(ctx, t, tenant, a); return nil })
			continue
		}
		cc := t.cfgs[0]
		if t.templ {
			var err error
			if cc, err = t.parse(r.newTenantID()); err != nil {
				a.addError("config") // not reached: the template parsed with other IDs
				continue
			}
		}
		g.Go(func() error {
			t0 := time.Now()
			c, err := r.connect(ctx, cc, a)
			if err != nil {
				return nil // counted
			}
			if err := r.query(ctx, c, a, nil, time.Now()); err == nil {
				a.ttfq.Record(time.Since(t0))
			}
			r.hangUp(c)
			return nil
		})
	}
	_ = g.Wait()
	a.elapsed += time.Since(start)
	after, okAfter := r.proc(t)
	if okBefore && okAfter {
		a.proc.note(before, after, 0)
	}
}

// coldHook runs t's Cold hook for tenant under ConnectTimeout and records
// its time as the tenant's time to first query, or counts its failure.
func (r *runner) coldHook(ctx context.Context, t *target, tenant string, a *acc) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.connectTimeout())
	defer cancel()
	t0 := time.Now()
	if err := t.cold(cctx, tenant); err != nil {
		r.fail(ctx, a, err)
		return
	}
	a.ttfq.Record(time.Since(t0))
}

// warmup connects once to every tenant of every templated target, so that
// tenants created on first connect are not measured.
func (r *runner) warmup(ctx context.Context) {
	for _, t := range r.targets {
		if !t.templ {
			continue
		}
		scratch := newAcc()
		r.enter(step{sc: Steady, tenants: r.cfg.tenants()}, t.label, 0, 1, scratch)
		r.setPhase("warmup")
		g := r.limited()
		for _, cc := range t.cfgs {
			if ctx.Err() != nil {
				break
			}
			g.Go(func() error {
				if c, err := r.connect(ctx, cc, scratch); err == nil {
					_ = r.query(ctx, c, scratch, nil, time.Now())
					r.hangUp(c)
				}
				return nil
			})
		}
		_ = g.Wait()
	}
}

// openAll opens conns[i] for seats[i], Concurrency at a time, spread over
// Ramp. Failed connections stay nil (and are counted).
func (r *runner) openAll(ctx context.Context, seats []seat, conns []*pgconn.PgConn, a *acc) {
	r.setPhase("connect")
	g := r.limited()
	start := time.Now()
	for i := range conns {
		if r.cfg.Ramp > 0 && !sleepUntil(ctx, start.Add(r.cfg.Ramp*time.Duration(i)/time.Duration(len(conns)))) {
			break
		}
		if ctx.Err() != nil {
			break
		}
		cc := seats[i].cc
		g.Go(func() error {
			if c, err := r.connect(ctx, cc, a); err == nil {
				conns[i] = c
			}
			return nil
		})
	}
	_ = g.Wait()
}

// closeAll closes every connection in conns, Concurrency at a time.
func (r *runner) closeAll(conns []*pgconn.PgConn) {
	r.setPhase("close")
	g := r.limited()
	for i, c := range conns {
		if c != nil {
			g.Go(func() error { r.hangUp(c); return nil })
			conns[i] = nil
		}
	}
	_ = g.Wait()
}

// limited returns a group that runs at most Concurrency functions at once;
// its functions never fail (failures are counted instead).
func (r *runner) limited() *errgroup.Group {
	g := new(errgroup.Group)
	g.SetLimit(r.cfg.concurrency())
	return g
}

// connect opens one connection and records its latency or its failure.
func (r *runner) connect(ctx context.Context, cc *pgconn.Config, a *acc) (*pgconn.PgConn, error) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.connectTimeout())
	t0 := time.Now()
	c, err := pgconn.ConnectConfig(cctx, cc)
	d := time.Since(t0)
	cancel()
	if err != nil {
		r.fail(ctx, a, err)
		return nil, err
	}
	r.open.Add(1)
	a.connect.Record(d)
	return c, nil
}

// query runs the query on c and records its latency, counted from due, in
// a and grp (if not nil), or its failure in a.
func (r *runner) query(ctx context.Context, c *pgconn.PgConn, a *acc, grp *Histogram, due time.Time) error {
	qctx, cancel := context.WithTimeout(ctx, r.cfg.queryTimeout())
	err := c.Exec(qctx, r.cfg.query()).Close()
	cancel()
	if err != nil {
		r.fail(ctx, a, err)
		return err
	}
	d := time.Since(due)
	a.query.Record(d)
	if grp != nil {
		grp.Record(d)
	}
	return nil
}

// hangUp closes c, politely but without waiting long.
func (r *runner) hangUp(c *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = c.Close(ctx)
	cancel()
	r.open.Add(-1)
}

// fail counts err, unless it is the run being stopped.
func (r *runner) fail(ctx context.Context, a *acc, err error) {
	if ctx.Err() != nil {
		return
	}
	a.addError(classify(err))
}

// classify names the class an error is counted under: its SQLSTATE, or
// ErrClassTimeout, or ErrClassNetwork.
func classify(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code != "" {
		return pgErr.Code
	}
	var ne net.Error
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return ErrClassTimeout
	}
	return ErrClassNetwork
}

// proc reads t's process status, if it has a PID and the process is
// still there.
func (r *runner) proc(t *target) (procStatus, bool) {
	if t.pid == 0 {
		return procStatus{}, false
	}
	st, err := readProcStatus(t.pid)
	return st, err == nil
}

func countOpen(conns []*pgconn.PgConn) int64 {
	var n int64
	for _, c := range conns {
		if c != nil {
			n++
		}
	}
	return n
}

// schedule hands out the due times of an open-loop run: evenly spaced at
// Rate per second from start, until end. Nil when the run is closed-loop.
type schedule struct {
	start, end time.Time
	nsPer      float64
	next       atomic.Int64
}

func (r *runner) schedule(start, end time.Time) *schedule {
	if r.cfg.Rate <= 0 {
		return nil
	}
	return &schedule{start: start, end: end, nsPer: float64(time.Second) / r.cfg.Rate}
}

// claim returns the next due time, and false once it is past end. Due
// times in the past mean the clients are behind: the query runs at once,
// and its latency includes the delay.
func (s *schedule) claim() (time.Time, bool) {
	i := s.next.Add(1) - 1
	due := s.start.Add(time.Duration(float64(i) * s.nsPer))
	return due, due.Before(s.end)
}

// sleepUntil waits until t or ctx's end; it reports whether ctx is still
// live.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff spaces out retries against a failing target: 50ms doubling to
// 1s, with jitter.
type backoff struct{ d time.Duration }

func (b *backoff) reset() { b.d = 0 }

// wait sleeps for the next backoff, cut short at end; it reports whether
// the client should go on.
func (b *backoff) wait(ctx context.Context, end time.Time) bool {
	b.d = min(max(2*b.d, 50*time.Millisecond), time.Second)
	at := time.Now().Add(b.d/2 + randv2.N(b.d/2+1))
	if at.After(end) {
		at = end
	}
	return sleepUntil(ctx, at) && time.Now().Before(end)
}

// acc accumulates one target's measurements in one scenario step, over
// its rounds. The histograms and errors are written by many goroutines;
// the other fields only by Run's goroutine, between rounds.
type acc struct {
	connect, query, ttfq Histogram
	// small and heavy are Fairness's query latencies per group (also in
	// query).
	small, heavy Histogram

	errMu sync.Mutex
	errs  map[string]int64 // guarded by errMu
	errN  atomic.Int64

	elapsed time.Duration
	held    int64
	rounds  int
	proc    procAcc

	// smp samples the current round into timeline (see sampler), which
	// runs tlEnd long so far; timeline is written by the sampler's
	// goroutine during a round.
	smp      *sampler
	timeline []Sample
	tlEnd    time.Duration
}

func newAcc() *acc { return &acc{errs: map[string]int64{}} }

func (a *acc) addError(class string) {
	a.errMu.Lock()
	a.errs[class]++
	a.errMu.Unlock()
	a.errN.Add(1)
}

// procAcc accumulates the serving process's status over rounds.
type procAcc struct {
	n                    int
	first, last          procStatus
	deltaSum, perConnSum float64
}

func (p *procAcc) note(before, after procStatus, held int64) {
	if p.n == 0 {
		p.first = before
	}
	p.last = after
	delta := float64(after.rssKB - before.rssKB)
	p.deltaSum += delta
	if held > 0 {
		p.perConnSum += delta / float64(held)
	}
	p.n++
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (a *acc) result(label string, sc Scenario) Result {
	res := Result{
		Target:       label,
		ElapsedMs:    ms(a.elapsed),
		HeldConns:    a.held,
		Connects:     a.connect.Count(),
		ConnectP50Ms: ms(a.connect.Quantile(0.50)),
		ConnectP90Ms: ms(a.connect.Quantile(0.90)),
		ConnectP99Ms: ms(a.connect.Quantile(0.99)),
		ConnectMaxMs: ms(a.connect.Max()),
		Queries:      a.query.Count(),
		QueryP50Ms:   ms(a.query.Quantile(0.50)),
		QueryP90Ms:   ms(a.query.Quantile(0.90)),
		QueryP99Ms:   ms(a.query.Quantile(0.99)),
		QueryMaxMs:   ms(a.query.Max()),
	}
	if secs := a.elapsed.Seconds(); secs > 0 {
		switch sc {
		case Steady, Scale, Storm, Fairness:
			res.QueriesPerSec = float64(res.Queries) / secs
		}
		switch sc {
		case Storm, Cold:
			res.ConnectionsPerSec = float64(res.Connects) / secs
		}
	}
	res.Timeline, res.ConnectCDF, res.QueryCDF = a.timeline, a.connect.cdf(), a.query.cdf()
	if sc == Cold {
		res.TTFQCDF = a.ttfq.cdf()
		res.TTFQ = &TTFQ{
			Count: a.ttfq.Count(),
			P50Ms: ms(a.ttfq.Quantile(0.50)),
			P90Ms: ms(a.ttfq.Quantile(0.90)),
			P99Ms: ms(a.ttfq.Quantile(0.99)),
			MaxMs: ms(a.ttfq.Max()),
		}
	}
	if sc == Fairness {
		res.Groups = &Groups{
			SmallQueries:    a.small.Count(),
			SmallQueryP50Ms: ms(a.small.Quantile(0.50)),
			SmallQueryP95Ms: ms(a.small.Quantile(0.95)),
			SmallQueryP99Ms: ms(a.small.Quantile(0.99)),
			HeavyQueries:    a.heavy.Count(),
			HeavyQueryP50Ms: ms(a.heavy.Quantile(0.50)),
			HeavyQueryP99Ms: ms(a.heavy.Quantile(0.99)),
		}
		if secs := a.elapsed.Seconds(); secs > 0 {
			res.HeavyQueriesPerSec = float64(res.HeavyQueries) / secs
		}
	}
	if p := &a.proc; p.n > 0 {
		res.Process = &Process{
			RSSBeforeKB:   p.first.rssKB,
			RSSAfterKB:    p.last.rssKB,
			RSSDeltaKB:    p.deltaSum / float64(p.n),
			RSSPerConnKB:  p.perConnSum / float64(p.n),
			ThreadsBefore: p.first.threads,
			ThreadsAfter:  p.last.threads,
		}
	}
	a.errMu.Lock()
	res.Errors = maps.Clone(a.errs)
	a.errMu.Unlock()
	for _, n := range res.Errors {
		res.ErrorsTotal += n
	}
	return res
}

// scenarioReport reports st; earlier are the steps reported before it (for
// Fairness, its FairnessAlone step).
func (r *runner) scenarioReport(st step, rounds int, accs []*acc, earlier []ScenarioReport) ScenarioReport {
	sr := ScenarioReport{
		Name:           st.name(),
		Tenants:        st.tenants,
		ConnsPerTenant: r.cfg.connsPerTenant(),
		Rounds:         rounds,
		DurationMs:     ms(r.cfg.duration()),
		Query:          r.cfg.query(),
	}
	switch st.sc {
	case Steady, Scale, Storm:
		sr.Rate = r.cfg.Rate
	case Cold:
		sr.ConnsPerTenant, sr.DurationMs = 1, 0
	}
	if st.sc == Fairness && !st.alone {
		sr.HeavyConns = r.cfg.heavyConns()
	}
	for ti, a := range accs {
		if a.rounds > 0 {
			sr.Results = append(sr.Results, a.result(r.targets[ti].label, st.sc))
		}
	}
	if sr.Name == Fairness {
		setVsAlone(sr.Results, earlier)
	}
	setRatios(sr.Results)
	return sr
}

// setVsAlone sets each Fairness result's SmallP99VsAlone from the same
// target's result in the last FairnessAlone step of earlier, if any.
func setVsAlone(results []Result, earlier []ScenarioReport) {
	var alone *ScenarioReport
	for i := len(earlier) - 1; i >= 0 && alone == nil; i-- {
		if earlier[i].Name == FairnessAlone {
			alone = &earlier[i]
		}
	}
	if alone == nil {
		return
	}
	for i := range results {
		r := &results[i]
		for _, ar := range alone.Results {
			if ar.Target == r.Target && r.Groups != nil && ar.Groups != nil && ar.SmallQueryP99Ms > 0 {
				r.SmallP99VsAlone = r.SmallQueryP99Ms / ar.SmallQueryP99Ms
			}
		}
	}
}

// enter records which step, target and round runs now, for Progress.
func (r *runner) enter(st step, label string, round, rounds int, a *acc) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.status = Progress{Scenario: st.name(), Tenants: st.tenants, Target: label, Round: round + 1, Rounds: rounds}
	r.mu.cur = a
}

func (r *runner) setPhase(p string) {
	r.mu.Lock()
	r.mu.status.Phase = p
	r.mu.Unlock()
}

func (r *runner) snapshot() Progress {
	r.mu.Lock()
	p, a := r.mu.status, r.mu.cur
	r.mu.Unlock()
	if a != nil {
		p.Connects, p.Queries, p.Errors = a.connect.Count(), a.query.Count(), a.errN.Load()
	}
	p.Open = r.open.Load()
	p.Elapsed = time.Since(r.start)
	return p
}

// startProgress starts the goroutine that calls cfg.Progress, if set; the
// returned func stops it and waits for it.
func (r *runner) startProgress() (stop func()) {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { r.reportProgress(done) })
	return func() {
		close(done)
		wg.Wait()
	}
}

func (r *runner) reportProgress(done <-chan struct{}) {
	tick := time.NewTicker(r.cfg.progressInterval())
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			r.cfg.Progress(r.snapshot())
		}
	}
}
