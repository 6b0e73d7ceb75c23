package neon_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/neon"
	"github.com/pgtenant/pgtenant/provision/neon/neontest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const apiKey = "napi_testkey0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefgh"

func testLogger() *slog.Logger {
	if os.Getenv("NEON_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newFake starts a fake Neon API (OpDelay 10ms unless cfg says otherwise)
// that accepts only apiKey, closed in t.Cleanup.
func newFake(t *testing.T, cfg neontest.Config) *neontest.Server {
	t.Helper()
	cfg.APIKey = apiKey
	if cfg.OpDelay == 0 {
		cfg.OpDelay = 10 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = testLogger()
	}
	s, err := neontest.NewServer(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// newProvider returns a provider on s with test timings (polls and backoff
// of a few ms, no rate limit to speak of) unless cfg sets them.
func newProvider(t *testing.T, s *neontest.Server, cfg neon.Config) *neon.Provider {
	t.Helper()
	cfg.BaseURL = s.URL()
	if cfg.APIKey == "" {
		cfg.APIKey = apiKey
	}
	if cfg.OpPollInterval == 0 {
		cfg.OpPollInterval = 5 * time.Millisecond
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 5 * time.Millisecond
	}
	if cfg.RetryBudget == 0 {
		cfg.RetryBudget = 30 * time.Second
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 30 * time.Second
	}
	if cfg.RequestsPerMinute == 0 {
		cfg.RequestsPerMinute = 1_000_000
	}
	if cfg.RoutePerSecond == 0 {
		cfg.RoutePerSecond = 100_000
	}
	if cfg.Log == nil {
		cfg.Log = testLogger()
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	t.Cleanup(tr.CloseIdleConnections)
	cfg.HTTPClient = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	p, err := neon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// templateProject creates a project in the fake (default branch "main",
// neondb / neondb_owner) to branch tenants from, and returns its id.
func templateProject(t *testing.T, s *neontest.Server, name string) neontest.CreatedProject {
	t.Helper()
	cp, err := s.CreateProject(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func branchNames(s *neontest.Server, pid string) []string {
	var names []string
	for _, b := range s.Branches(pid) {
		names = append(names, b.Name)
	}
	return names
}

func count(names []string, name string) int {
	n := 0
	for _, x := range names {
		if x == name {
			n++
		}
	}
	return n
}

// calls summarises requests as "METHOD /path/template" -> count, with ids
// replaced by {}.
func calls(reqs []neontest.Request) map[string]int {
	m := map[string]int{}
	for _, r := range reqs {
		m[r.Method+" "+template(r.Path)]++
	}
	return m
}

func template(path string) string {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if i > 0 && (segs[i-1] == "projects" || segs[i-1] == "branches" || segs[i-1] == "operations" ||
			segs[i-1] == "roles" || segs[i-1] == "endpoints") && s != "count" {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

func TestBranchMode(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	cp := templateProject(t, s, "tenants")
	pid, parent := cp.Project.ID, cp.Branch.ID
	p := newProvider(t, s, neon.Config{
		Mode:           neon.ModeBranch,
		Projects:       []neon.BranchProject{{ID: pid, ParentBranchID: parent}},
		SuspendTimeout: 2 * time.Minute, MinCU: 0.25, MaxCU: 1,
	})
	ctx := t.Context()

	before := len(s.Requests())
	ep, err := p.Create(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	reqs := s.Requests()[before:]
	t.Logf("API calls for a new tenant (branch mode): %d %v", len(reqs), calls(reqs))

	branches := s.Branches(pid)
	i := slices.IndexFunc(branches, func(b neontest.Branch) bool { return b.Name == "tenant-acme" })
	if i < 0 {
		t.Fatalf("no branch tenant-acme in %v", branchNames(s, pid))
	}
	b := branches[i]
	if b.ParentID != parent || b.CurrentState != "ready" {
		t.Errorf("branch parent %q state %q, want parent %q, ready", b.ParentID, b.CurrentState, parent)
	}
	var rw neontest.Endpoint
	for _, e := range s.Endpoints(pid) {
		if e.BranchID == b.ID {
			rw = e
		}
	}
	want := provision.Endpoint{
		Host: strings.Replace(rw.Host, rw.ID, rw.ID+"-pooler", 1), Port: 5432,
		Database: "neondb", User: "neondb_owner", Password: cp.Roles[0].Password,
		ProviderID: pid + "/" + b.ID,
	}
	if ep != want {
		t.Errorf("Create = %+v (password %q),\nwant     %+v (password %q)", ep, ep.Password, want, want.Password)
	}
	if rw.SuspendTimeoutSeconds != 120 || rw.AutoscalingLimitMinCU != 0.25 || rw.AutoscalingLimitMaxCU != 1 || rw.Type != "read_write" {
		t.Errorf("endpoint settings %+v", rw)
	}

	// Again: found by name and adopted, nothing created.
	before = len(s.Requests())
	again, err := p.Create(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	reqs = s.Requests()[before:]
	t.Logf("API calls for an existing tenant (branch mode): %d %v", len(reqs), calls(reqs))
	if again != ep {
		t.Errorf("second Create = %+v, want %+v", again, ep)
	}
	if c := calls(reqs); c["POST /projects/{}/branches"] != 0 {
		t.Errorf("second Create posted: %v", c)
	}

	info, ok, err := p.Lookup(ctx, "acme")
	if err != nil || !ok {
		t.Fatalf("Lookup = %v, %v", ok, err)
	}
	if info.ProviderID != ep.ProviderID || info.Host != ep.Host || info.Name != "tenant-acme" || info.EndpointID != rw.ID {
		t.Errorf("Lookup = %+v", info)
	}

	if err := p.Delete(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if n := count(branchNames(s, pid), "tenant-acme"); n != 0 {
		t.Errorf("%d branches tenant-acme after Delete", n)
	}
	if _, ok, err := p.Lookup(ctx, "acme"); ok || err != nil {
		t.Errorf("Lookup after Delete = %v, %v", ok, err)
	}
	if err := p.Delete(ctx, "acme"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("second Delete = %v, want ErrTenantNotFound", err)
	}
}

func TestProjectMode(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	p := newProvider(t, s, neon.Config{
		Mode:     neon.ModeProject,
		RegionID: "aws-eu-central-1", PGVersion: 16,
		SuspendTimeout: 5 * time.Minute, MaxCU: 2,
	})
	ctx := t.Context()

	before := len(s.Requests())
	ep, err := p.Create(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	reqs := s.Requests()[before:]
	t.Logf("API calls for a new tenant (project mode): %d %v", len(reqs), calls(reqs))

	projects := s.Projects()
	if len(projects) != 1 || projects[0].Name != "tenant-acme" {
		t.Fatalf("projects %+v, want one named tenant-acme", projects)
	}
	pr := projects[0]
	if pr.RegionID != "aws-eu-central-1" || pr.PGVersion != 16 ||
		pr.DefaultEndpointSettings.SuspendTimeoutSeconds != 300 || pr.DefaultEndpointSettings.AutoscalingLimitMaxCU != 2 {
		t.Errorf("project settings %+v", pr)
	}
	eps := s.Endpoints(pr.ID)
	if len(eps) != 1 {
		t.Fatalf("endpoints %+v", eps)
	}
	if ep.ProviderID != pr.ID || ep.Host != strings.Replace(eps[0].Host, eps[0].ID, eps[0].ID+"-pooler", 1) ||
		ep.Port != 5432 || ep.Database != "neondb" || ep.User != "neondb_owner" || !strings.HasPrefix(ep.Password, "npg_") {
		t.Errorf("Create = %+v", ep)
	}
	if !strings.HasSuffix(ep.Host, ".c-2.eu-central-1.aws.neon.tech") {
		t.Errorf("host %q is not in the project's region", ep.Host)
	}

	before = len(s.Requests())
	again, err := p.Create(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	reqs = s.Requests()[before:]
	t.Logf("API calls for an existing tenant (project mode): %d %v", len(reqs), calls(reqs))
	if again != ep {
		t.Errorf("second Create = %+v, want %+v", again, ep)
	}
	info, ok, err := p.Lookup(ctx, "acme")
	if err != nil || !ok || info.ProviderID != pr.ID || info.BranchID != eps[0].BranchID || info.Host != ep.Host {
		t.Fatalf("Lookup = %+v, %v, %v", info, ok, err)
	}
	if err := p.Delete(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Projects()); n != 0 {
		t.Errorf("%d projects after Delete", n)
	}
	if err := p.Delete(ctx, "acme"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Errorf("second Delete = %v, want ErrTenantNotFound", err)
	}
}

func TestRetryBursts(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	pid := templateProject(t, s, "tenants").Project.ID
	p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: pid}}})

	s.FailNext("GET", "/projects/{id}/branches", 503, 1)
	s.FailNext("GET", "/projects/{id}/branches", 500, 1)
	s.FailNext("POST", "/projects/{id}/branches", 423, 2)
	s.FailNext("POST", "/projects/{id}/branches", 429, 2)
	s.FailNext("POST", "/projects/{id}/branches", 503, 2)
	s.FailNext("GET", "/projects/{id}/operations/{op}", 429, 1)
	s.FailNext("GET", "/projects/{id}/operations/{op}", 524, 1)
	if _, err := p.Create(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if n := count(branchNames(s, pid), "tenant-acme"); n != 1 {
		t.Fatalf("%d branches tenant-acme, want 1", n)
	}
	c := calls(s.Requests())
	if c["POST /projects/{}/branches"] != 7 {
		t.Errorf("POST branches sent %d times, want 6 refused + 1: %v", c["POST /projects/{}/branches"], c)
	}
}

func TestLostCreateAnswer(t *testing.T) {
	for _, mode := range []neon.Mode{neon.ModeBranch, neon.ModeProject} {
		t.Run(string(mode), func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			s := newFake(t, neontest.Config{OpDelay: 30 * time.Millisecond})
			cfg := neon.Config{Mode: mode}
			var pid string
			if mode == neon.ModeBranch {
				pid = templateProject(t, s, "tenants").Project.ID
				cfg.Projects = []neon.BranchProject{{ID: pid}}
			}
			p := newProvider(t, s, cfg)
			s.DropAfterCreate(1)
			ep, err := p.Create(t.Context(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			var posts, dropped int
			for _, r := range s.Requests() {
				if r.Method == "POST" {
					posts++
					if r.Status == 0 {
						dropped++
					}
				}
			}
			if posts != 1 || dropped != 1 {
				t.Errorf("%d POSTs (%d dropped), want exactly the one dropped", posts, dropped)
			}
			if mode == neon.ModeBranch {
				if n := count(branchNames(s, pid), "tenant-acme"); n != 1 {
					t.Errorf("%d branches tenant-acme, want 1", n)
				}
			} else if pr := s.Projects(); len(pr) != 1 || pr[0].ID != ep.ProviderID {
				t.Errorf("projects %+v, want one, %s", pr, ep.ProviderID)
			}
			if ep.Password == "" || !strings.Contains(ep.Host, "-pooler.") {
				t.Errorf("adopted endpoint %+v", ep)
			}
			// The adopted tenant's operations were waited for: the project is idle.
			id, _, _ := strings.Cut(ep.ProviderID, "/")
			for _, op := range s.Operations(id) {
				if op.Status != "finished" {
					t.Errorf("operation %s %s still %s", op.Action, op.ID, op.Status)
				}
			}
		})
	}
}

func TestConcurrentCreates(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{BranchLimit: 100, OpDelay: 5 * time.Millisecond})
	pid := templateProject(t, s, "tenants").Project.ID
	cfg := neon.Config{Projects: []neon.BranchProject{{ID: pid}}}
	ctx := t.Context()

	run := func(n int, f func(i int) (provision.Endpoint, error)) []provision.Endpoint {
		eps := make([]provision.Endpoint, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ep, err := f(i)
				if err != nil {
					t.Errorf("Create #%d: %v", i, err)
				}
				eps[i] = ep
			})
		}
		wg.Wait()
		return eps
	}
	same := func(eps []provision.Endpoint) {
		t.Helper()
		for _, ep := range eps[1:] {
			if ep != eps[0] {
				t.Errorf("endpoints differ: %+v vs %+v", ep, eps[0])
			}
		}
	}

	t.Run("one tenant, one provider", func(t *testing.T) {
		p := newProvider(t, s, cfg)
		before := len(s.Requests())
		same(run(20, func(int) (provision.Endpoint, error) { return p.Create(ctx, "one") }))
		if n := count(branchNames(s, pid), "tenant-one"); n != 1 {
			t.Errorf("%d branches tenant-one, want 1", n)
		}
		if c := calls(s.Requests()[before:]); c["POST /projects/{}/branches"] != 1 {
			t.Errorf("calls %v, want one POST (one flight)", c)
		}
	})
	t.Run("one tenant, four providers", func(t *testing.T) {
		// Like four router instances without a catalog lock: names are
		// unique per project, so the losers get 409 and adopt.
		ps := []*neon.Provider{newProvider(t, s, cfg), newProvider(t, s, cfg), newProvider(t, s, cfg), newProvider(t, s, cfg)}
		same(run(20, func(i int) (provision.Endpoint, error) { return ps[i%4].Create(ctx, "four") }))
		if n := count(branchNames(s, pid), "tenant-four"); n != 1 {
			t.Errorf("%d branches tenant-four, want 1", n)
		}
	})
	t.Run("twenty tenants", func(t *testing.T) {
		p := newProvider(t, s, cfg)
		eps := run(20, func(i int) (provision.Endpoint, error) { return p.Create(ctx, fmt.Sprint("t", i)) })
		names := branchNames(s, pid)
		seen := map[string]bool{}
		for i, ep := range eps {
			if n := count(names, fmt.Sprint("tenant-t", i)); n != 1 {
				t.Errorf("%d branches tenant-t%d, want 1", n, i)
			}
			if seen[ep.ProviderID] || seen[ep.Host] {
				t.Errorf("tenant t%d shares %s / %s", i, ep.ProviderID, ep.Host)
			}
			seen[ep.ProviderID], seen[ep.Host] = true, true
		}
	})
	t.Run("one tenant, project mode", func(t *testing.T) {
		p := newProvider(t, s, neon.Config{Mode: neon.ModeProject})
		same(run(20, func(int) (provision.Endpoint, error) { return p.Create(ctx, "proj") }))
		n := 0
		for _, pr := range s.Projects() {
			if pr.Name == "tenant-proj" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d projects tenant-proj, want 1", n)
		}
	})
}

func TestSpillToNextProject(t *testing.T) {
	pgtest.CheckGoroutines(t)
	// Three branches per project: the default branch and two tenants.
	s := newFake(t, neontest.Config{BranchLimit: 3})
	p1 := templateProject(t, s, "p1").Project.ID
	p2 := templateProject(t, s, "p2").Project.ID
	p3 := templateProject(t, s, "p3").Project.ID
	p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{
		{ID: p1},
		{ID: p2, MaxBranches: 2}, // our own cap: the default branch and one tenant
		{ID: p3},
	}})
	ctx := t.Context()
	where := map[string]string{}
	for _, tenant := range []string{"a", "b", "c", "d", "e"} {
		ep, err := p.Create(ctx, tenant)
		if err != nil {
			t.Fatalf("Create %s: %v", tenant, err)
		}
		where[tenant], _, _ = strings.Cut(ep.ProviderID, "/")
	}
	want := map[string]string{"a": p1, "b": p1, "c": p2, "d": p3, "e": p3}
	for tenant, pid := range want {
		if where[tenant] != pid {
			t.Errorf("tenant %s went to %s, want %s (placement %v)", tenant, where[tenant], pid, where)
		}
	}
	_, err := p.Create(ctx, "f")
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("Create with every project full = %v, want a clear error", err)
	}
	t.Logf("all full: %v", err)
	// Existing tenants are still found in whichever project holds them.
	info, ok, err := p.Lookup(ctx, "d")
	if err != nil || !ok || info.ProjectID != p3 {
		t.Fatalf("Lookup d = %+v, %v, %v", info, ok, err)
	}
	// Deleting a tenant makes room in its project again.
	if err := p.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	ep, err := p.Create(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if pid, _, _ := strings.Cut(ep.ProviderID, "/"); pid != p1 {
		t.Errorf("tenant f went to %s, want %s (freed by deleting a)", pid, p1)
	}
}

func TestNotRetried(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	pid := templateProject(t, s, "tenants").Project.ID
	p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: pid}}})
	for _, status := range []int{400, 401, 403, 404, 422} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			before := len(s.Requests())
			s.FailNext("POST", "/projects/{id}/branches", status, 1) // a retry would succeed
			_, err := p.Create(t.Context(), "acme")
			var ae *neon.APIError
			if !errors.As(err, &ae) || ae.Status != status {
				t.Fatalf("Create = %v, want an *APIError with status %d", err, status)
			}
			if c := calls(s.Requests()[before:]); c["POST /projects/{}/branches"] != 1 {
				t.Errorf("POST sent %d times, want 1: %v", c["POST /projects/{}/branches"], c)
			}
		})
	}
	t.Run("wrong key", func(t *testing.T) {
		bad := newProvider(t, s, neon.Config{APIKey: "napi_wrong", Projects: []neon.BranchProject{{ID: pid}}})
		before := len(s.Requests())
		_, err := bad.Create(t.Context(), "acme")
		if apiStatusOf(err) != 401 {
			t.Fatalf("Create = %v, want 401", err)
		}
		if n := len(s.Requests()) - before; n != 1 {
			t.Errorf("%d requests with a wrong key, want 1", n)
		}
		if strings.Contains(err.Error(), "napi_wrong") {
			t.Errorf("error leaks the key: %v", err)
		}
	})
	if n := count(branchNames(s, pid), "tenant-acme"); n != 0 {
		t.Errorf("%d branches created", n)
	}
}

func apiStatusOf(err error) int {
	var ae *neon.APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// maxInWindow returns the most events in any window [t, t+w).
func maxInWindow(times []time.Time, w time.Duration) int {
	slices.SortFunc(times, time.Time.Compare)
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func TestRateLimit(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	pid := templateProject(t, s, "tenants").Project.ID
	// 900/min: a burst of 40, then 860/min (14.3/s); 40/s per route
	// after a burst of 20.
	if _, err := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: pid}}}).Create(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: pid}}, RequestsPerMinute: 900, RoutePerSecond: 40})
	before := len(s.Requests())
	start := time.Now()
	var wg sync.WaitGroup
	for range 40 { // 40 lookups of an existing tenant: 80 requests on two routes
		wg.Go(func() {
			if _, ok, err := p.Lookup(t.Context(), "acme"); err != nil || !ok {
				t.Error(ok, err)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	reqs := s.Requests()[before:]
	var all []time.Time
	byRoute := map[string][]time.Time{}
	for _, r := range reqs {
		all = append(all, r.Time)
		byRoute[r.Method+" "+template(r.Path)] = append(byRoute[r.Method+" "+template(r.Path)], r.Time)
	}
	const slack = 2 // network jitter between our send and the fake's clock
	for _, w := range []time.Duration{250 * time.Millisecond, time.Second, 2 * time.Second} {
		limit := 40 + int(w.Seconds()*860/60) + slack
		if n := maxInWindow(all, w); n > limit {
			t.Errorf("%d requests within %v, want at most %d", n, w, limit)
		}
	}
	for route, ts := range byRoute {
		if n := maxInWindow(ts, time.Second); n > 40+slack {
			t.Errorf("%s: %d requests within 1s, want at most 40", route, n)
		}
	}
	// The overall limit binds: a burst of 40, then 40 more at 14.3/s.
	if len(reqs) != 80 || took < 2500*time.Millisecond {
		t.Errorf("%d requests took %v, want 80 over about 2.8s", len(reqs), took)
	}
	t.Logf("%d requests in %v", len(reqs), took)
}

func TestFailedOperation(t *testing.T) {
	for _, tc := range []struct {
		mode   neon.Mode
		action string
	}{{neon.ModeBranch, "create_branch"}, {neon.ModeBranch, "start_compute"}, {neon.ModeProject, "create_timeline"}} {
		t.Run(string(tc.mode)+"/"+tc.action, func(t *testing.T) {
			pgtest.CheckGoroutines(t)
			s := newFake(t, neontest.Config{})
			cfg := neon.Config{Mode: tc.mode}
			if tc.mode == neon.ModeBranch {
				cfg.Projects = []neon.BranchProject{{ID: templateProject(t, s, "tenants").Project.ID}}
			}
			p := newProvider(t, s, cfg)
			s.FailNextOperation(tc.action)
			_, err := p.Create(t.Context(), "acme")
			var oe *neon.OperationError
			if !errors.As(err, &oe) || oe.Action != tc.action || oe.Status != "failed" {
				t.Fatalf("Create = %v, want an OperationError for %s", err, tc.action)
			}
			if !strings.Contains(err.Error(), tc.action) || !strings.Contains(err.Error(), "injected") {
				t.Errorf("error %q does not name the action and its error text", err)
			}
			t.Logf("%v", err)
			// The broken tenant was rolled back: the next Create starts
			// afresh and works.
			if _, ok, err := p.Lookup(t.Context(), "acme"); ok || err != nil {
				t.Errorf("Lookup after the failure = %v, %v, want rolled back", ok, err)
			}
			if _, err := p.Create(t.Context(), "acme"); err != nil {
				t.Errorf("Create after the failure: %v", err)
			}
		})
	}
}

func TestSecretsNeverLeak(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	cp := templateProject(t, s, "tenants")
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := neon.Config{Projects: []neon.BranchProject{{ID: cp.Project.ID}}, Log: log, UniquePasswords: true}
	p := newProvider(t, s, cfg)
	ctx := t.Context()

	secrets := []string{apiKey, cp.Roles[0].Password}
	ep, err := p.Create(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if ep.Password == cp.Roles[0].Password {
		t.Error("UniquePasswords: the tenant kept the template's password")
	}
	secrets = append(secrets, ep.Password)

	// Errors of every kind, retries logged at debug level.
	var errs []error
	s.FailNext("GET", "/projects/{id}/branches", 503, 2)
	s.FailNext("POST", "/projects/{id}/branches", 400, 1)
	_, err = p.Create(ctx, "bad")
	errs = append(errs, err)
	s.FailNextOperation("create_branch")
	_, err = p.Create(ctx, "failing")
	errs = append(errs, err)
	s.FailNext("GET", "/projects/{id}/branches/{b}/roles/{r}/reveal_password", 403, 1)
	_, err = newProvider(t, s, cfg).Create(ctx, "acme") // adopts: reveals the password
	errs = append(errs, err)
	_, err = newProvider(t, s, neon.Config{APIKey: "napi_other", Projects: cfg.Projects}).Create(ctx, "x")
	errs = append(errs, err)
	secrets = append(secrets, "napi_other")

	for _, err := range errs {
		if err == nil {
			t.Fatal("expected an error")
		}
		for _, sec := range secrets {
			if strings.Contains(err.Error(), sec) || strings.Contains(fmt.Sprintf("%+v", err), sec) {
				t.Errorf("error leaks a secret: %v", err)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "retrying") {
		t.Error("no retry was logged")
	}
	for _, sec := range secrets {
		if strings.Contains(logs.String(), sec) {
			t.Errorf("log leaks a secret")
		}
	}
	for _, sec := range secrets {
		if strings.Contains(fmt.Sprint(ep), sec) && sec != "" {
			t.Errorf("Endpoint.String leaks a secret")
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestPasswordsNotStored covers a template project created with
// store_passwords=false: a new branch's password comes from the create
// answer, and adopting an existing one resets it (reveal answers 412).
func TestPasswordsNotStored(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{})
	body, _ := json.Marshal(map[string]any{"project": map[string]any{"name": "nostore", "store_passwords": false}})
	req, _ := http.NewRequestWithContext(t.Context(), "POST", s.URL()+"/projects", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var cp neontest.CreatedProject
	err = json.NewDecoder(resp.Body).Decode(&cp)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create project: %d %v", resp.StatusCode, err)
	}
	if err := s.WaitIdle(t.Context(), cp.Project.ID); err != nil {
		t.Fatal(err)
	}
	cfg := neon.Config{Projects: []neon.BranchProject{{ID: cp.Project.ID}}}
	first, err := newProvider(t, s, cfg).Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	before := len(s.Requests())
	adopted, err := newProvider(t, s, cfg).Create(t.Context(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	c := calls(s.Requests()[before:])
	if c["GET /projects/{}/branches/{}/roles/{}/reveal_password"] != 1 || c["POST /projects/{}/branches/{}/roles/{}/reset_password"] != 1 {
		t.Errorf("calls %v, want one reveal (412) and one reset", c)
	}
	if adopted.Password == first.Password || adopted.Password == "" || adopted.ProviderID != first.ProviderID {
		t.Errorf("adopted %+v (password changed: %v), first %+v", adopted, adopted.Password != first.Password, first)
	}
}

// TestConnect creates tenants on a fake backed by real Postgres and logs in
// to each returned Endpoint through the fake's compute proxy, as the router
// does: TLS verify-full against the endpoint host (which is also the SNI
// the proxy routes by) and SCRAM with the tenant's password.
func TestConnect(t *testing.T) {
	pgtest.CheckGoroutines(t)
	ctx := t.Context()
	be, err := neontest.NewBackend(ctx, pgtest.Shared(t).AdminDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close) // after s.Close (cleanups run last-in first-out)
	s := newFake(t, neontest.Config{Backend: be})
	cp := templateProject(t, s, "tenants")

	connect := func(ep provision.Endpoint) (*pgx.Conn, error) {
		cc, err := pgx.ParseConfig("sslmode=verify-full")
		if err != nil {
			return nil, err
		}
		cc.Host, cc.Port, cc.Database, cc.User, cc.Password = ep.Host, ep.Port, ep.Database, ep.User, ep.Password
		cc.TLSConfig = &tls.Config{RootCAs: s.CAPool(), ServerName: ep.Host, MinVersion: tls.VersionTLS12}
		cc.Fallbacks = nil
		cc.DialFunc, cc.LookupFunc = s.Dialer(), s.LookupFunc()
		return pgx.ConnectConfig(ctx, cc)
	}
	query := func(t *testing.T, ep provision.Endpoint) {
		t.Helper()
		conn, err := connect(ep)
		if err != nil {
			t.Fatalf("connect to %s: %v", ep, err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("query: %v", err)
		}
		// The fake logs in with local names, but reports the Neon role.
		if user := conn.PgConn().ParameterStatus("session_authorization"); user != ep.User {
			t.Errorf("session_authorization = %q, want %q", user, ep.User)
		}
	}

	t.Run("branch", func(t *testing.T) {
		p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: cp.Project.ID}}, UniquePasswords: true})
		ep, err := p.Create(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		query(t, ep)
		// The tenant's password is its own: the template's does not open it.
		stale := ep
		stale.Password = cp.Roles[0].Password
		if conn, err := connect(stale); err == nil {
			_ = conn.Close(ctx)
			t.Error("the template's password opens the tenant's branch")
		}
	})
	t.Run("project", func(t *testing.T) {
		p := newProvider(t, s, neon.Config{Mode: neon.ModeProject})
		ep, err := p.Create(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		query(t, ep)
	})
}

// TestCreateLeaderGivesUp checks that a caller waiting on another caller's
// create of the same tenant carries on when that caller's ctx ends.
func TestCreateLeaderGivesUp(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newFake(t, neontest.Config{OpDelay: 150 * time.Millisecond})
	pid := templateProject(t, s, "tenants").Project.ID
	p := newProvider(t, s, neon.Config{Projects: []neon.BranchProject{{ID: pid}}})

	leaderCtx, cancel := context.WithCancel(t.Context())
	defer cancel()
	leader := make(chan error, 1)
	go func() {
		_, err := p.Create(leaderCtx, "acme")
		leader <- err
	}()
	// Wait until the leader's POST landed: its flight is now polling.
	poll.Until(t, 10*time.Second, "the leader's POST", func() bool {
		return slices.ContainsFunc(s.Requests(), func(r neontest.Request) bool { return r.Method == "POST" })
	})
	follower := make(chan error, 1)
	go func() {
		ep, err := p.Create(t.Context(), "acme")
		if err == nil && ep.Password == "" {
			err = errors.New("no password")
		}
		follower <- err
	}()
	poll.Until(t, 10*time.Second, "the follower to join the flight", func() bool { return neon.Joins(p) == 2 })
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v, want context.Canceled", err)
	}
	if err := <-follower; err != nil {
		t.Errorf("follower: %v", err)
	}
	if n := count(branchNames(s, pid), "tenant-acme"); n != 1 {
		t.Errorf("%d branches tenant-acme, want 1", n)
	}
}
