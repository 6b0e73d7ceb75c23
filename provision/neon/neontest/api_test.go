package neontest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
)

// TestAPIBasics runs without Postgres: auth, error shapes, project limit,
// listing and paging, delete.
func TestAPIBasics(t *testing.T) {
	pgtest.CheckGoroutines(t)
	srv := newServer(t, Config{APIKey: "napi_secret", ProjectLimit: 3})
	c := newClient(t, srv, "napi_secret")

	t.Run("auth", func(t *testing.T) {
		for _, key := range []string{"", "napi_wrong"} {
			st, raw := newClient(t, srv, key).call("GET", "/projects", nil, nil)
			if st != http.StatusUnauthorized {
				t.Fatalf("key %q: status %d", key, st)
			}
			if e := apiErr(t, raw); e.Message == "" || e.RequestID == "" {
				t.Errorf("401 body %s", raw)
			}
		}
	})
	t.Run("unknown path", func(t *testing.T) {
		st, raw := c.call("GET", "/nope", nil, nil)
		if st != 404 || apiErr(t, raw).Message != "not found" {
			t.Fatalf("%d %s", st, raw)
		}
	})

	var created []CreatedProject
	for i := range 3 {
		var out CreatedProject
		st, raw := c.call("POST", "/projects", map[string]any{"project": map[string]any{"name": fmt.Sprintf("tenant-%d", i)}}, &out)
		if st != http.StatusCreated {
			t.Fatalf("create: %d %s", st, raw)
		}
		created = append(created, out)
	}
	t.Run("project limit", func(t *testing.T) {
		st, raw := c.call("POST", "/projects", map[string]any{"project": map[string]any{}}, nil)
		if e := apiErr(t, raw); st != 422 || e.Code != "PROJECTS_LIMIT_EXCEEDED" {
			t.Fatalf("%d %s", st, raw)
		}
	})
	t.Run("create answer", func(t *testing.T) {
		// Every key docs/neon-api.md §3.2 lists.
		st, raw := c.call("GET", "/projects/"+created[0].Project.ID, nil, nil)
		if st != 200 {
			t.Fatalf("%d %s", st, raw)
		}
		p := created[0]
		if !projectIDRe.MatchString(p.Project.ID) || !branchIDRe.MatchString(p.Branch.ID) ||
			len(p.Endpoints) != 1 || !endpointIDRe.MatchString(p.Endpoints[0].ID) {
			t.Errorf("id shapes: %s %s %+v", p.Project.ID, p.Branch.ID, p.Endpoints)
		}
		if len(p.Roles) != 1 || p.Roles[0].Name != "neondb_owner" || !passwordRe.MatchString(p.Roles[0].Password) {
			t.Errorf("roles %+v", p.Roles)
		}
		if len(p.Databases) != 1 || p.Databases[0].Name != "neondb" || p.Databases[0].OwnerName != "neondb_owner" {
			t.Errorf("databases %+v", p.Databases)
		}
		if p.Branch.Name != "main" || !p.Branch.Default || p.Branch.CurrentState != BranchInit || p.Branch.PendingState != BranchReady {
			t.Errorf("branch %+v", p.Branch)
		}
		ep := p.Endpoints[0]
		if ep.Type != "read_write" || ep.CurrentState != EndpointInit || ep.PendingState != EndpointActive ||
			ep.Host != ep.ID+".c-2.us-east-2.aws.neon.tech" || ep.ProxyHost != "c-2.us-east-2.aws.neon.tech" {
			t.Errorf("endpoint %+v", ep)
		}
		var actions []string
		for _, op := range p.Operations {
			actions = append(actions, op.Action+":"+op.Status)
			if !uuidRe.MatchString(op.ID) {
				t.Errorf("op id %q", op.ID)
			}
		}
		if want := []string{"create_timeline:running", "start_compute:scheduling"}; !slices.Equal(actions, want) {
			t.Errorf("operations %v, want %v", actions, want)
		}
		if len(p.ConnectionURIs) != 1 {
			t.Fatalf("connection_uris %+v", p.ConnectionURIs)
		}
		cp := p.ConnectionURIs[0].ConnectionParameters
		wantURI := fmt.Sprintf("postgresql://neondb_owner:%s@%s/neondb?sslmode=require&channel_binding=require", cp.Password, ep.Host)
		if p.ConnectionURIs[0].ConnectionURI != wantURI || cp.PoolerHost != ep.ID+"-pooler.c-2.us-east-2.aws.neon.tech" {
			t.Errorf("connection uri %+v", p.ConnectionURIs[0])
		}
	})
	t.Run("raw keys", func(t *testing.T) {
		var raw map[string]json.RawMessage
		_, body := c.call("GET", "/projects/"+created[1].Project.ID+"/branches/"+created[1].Branch.ID, nil, &raw)
		var b map[string]any
		_ = json.Unmarshal(raw["branch"], &b)
		for _, k := range []string{"id", "project_id", "name", "current_state", "state_changed_at", "creation_source",
			"created_at", "updated_at", "default", "protected", "cpu_used_sec", "active_time_seconds",
			"compute_time_seconds", "written_data_bytes", "data_transfer_bytes"} {
			if _, ok := b[k]; !ok {
				t.Errorf("branch lacks %q: %s", k, body)
			}
		}
		if ts, _ := b["created_at"].(string); !strings.HasSuffix(ts, "Z") || strings.Contains(ts, ".") {
			t.Errorf("created_at %q: want RFC 3339 UTC seconds", ts)
		}
	})
	t.Run("list and page", func(t *testing.T) {
		type page struct {
			Projects   []Project
			Pagination struct{ Cursor string }
		}
		var all []string
		cursor := ""
		for range 5 {
			var pg page
			if st, raw := c.call("GET", "/projects?limit=2&cursor="+cursor, nil, &pg); st != 200 {
				t.Fatalf("%d %s", st, raw)
			}
			for _, p := range pg.Projects {
				all = append(all, p.Name)
			}
			if len(pg.Projects) < 2 {
				break
			}
			cursor = pg.Pagination.Cursor
		}
		slices.Sort(all)
		if !slices.Equal(all, []string{"tenant-0", "tenant-1", "tenant-2"}) {
			t.Errorf("paged list: %v", all)
		}
		var pg page
		c.call("GET", "/projects?search=tenant-1&org_id="+srv.OrgID(), nil, &pg)
		if len(pg.Projects) != 1 || pg.Projects[0].Name != "tenant-1" {
			t.Errorf("search: %+v", pg.Projects)
		}
		if st, _ := c.call("GET", "/projects?limit=401", nil, nil); st != 400 {
			t.Errorf("limit=401: %d", st)
		}
	})
	t.Run("passwords", func(t *testing.T) {
		p := created[0]
		base := "/projects/" + p.Project.ID + "/branches/" + p.Branch.ID + "/roles/"
		var rev struct{ Password string }
		if st, raw := c.call("GET", base+"neondb_owner/reveal_password", nil, &rev); st != 200 || rev.Password != p.Roles[0].Password {
			t.Errorf("reveal: %d %s", st, raw)
		}
		if st, raw := c.call("GET", base+"nobody/reveal_password", nil, nil); st != 404 || apiErr(t, raw).Message != "role not found" {
			t.Errorf("reveal unknown role: %d %s", st, raw)
		}
		if err := srv.WaitIdle(t.Context(), created[2].Project.ID); err != nil {
			t.Fatal(err)
		}
		// Over the limit, so make room first.
		c.call("DELETE", "/projects/"+created[2].Project.ID, nil, nil)
		var np CreatedProject
		if st, raw := c.call("POST", "/projects", map[string]any{"project": map[string]any{"name": "tenant-2", "store_passwords": false}}, &np); st != 201 {
			t.Fatalf("%d %s", st, raw)
		}
		created[2] = np
		st, raw := c.call("GET", "/projects/"+np.Project.ID+"/branches/"+np.Branch.ID+"/roles/neondb_owner/reveal_password", nil, nil)
		if st != http.StatusPreconditionFailed {
			t.Errorf("reveal with store_passwords=false: %d %s", st, raw)
		}
	})
	t.Run("delete", func(t *testing.T) {
		id := created[2].Project.ID
		var out struct{ Project Project }
		if st, raw := c.call("DELETE", "/projects/"+id, nil, &out); st != 200 || out.Project.ID != id {
			t.Fatalf("%d %s", st, raw)
		}
		st, raw := c.call("GET", "/projects/"+id, nil, nil)
		if st != 404 || apiErr(t, raw).Message != "project not found" {
			t.Errorf("get deleted: %d %s", st, raw)
		}
		if st, _ := c.call("DELETE", "/projects/"+id, nil, nil); st != 404 {
			t.Errorf("delete again: %d", st)
		}
		// The limit counts live projects only.
		if st, raw := c.call("POST", "/projects", map[string]any{"project": map[string]any{}}, nil); st != 201 {
			t.Errorf("create after delete: %d %s", st, raw)
		}
	})
}

// TestOperationsAndBranches: the op queue, 423, branch creation rules,
// listing and deletion (API only).
func TestOperationsAndBranches(t *testing.T) {
	pgtest.CheckGoroutines(t)
	srv := newServer(t, Config{BranchLimit: 3})
	c := newClient(t, srv, "k")
	var p CreatedProject
	c.call("POST", "/projects", map[string]any{"project": map[string]any{"name": "ops"}}, &p)
	pid := p.Project.ID
	branches := "/projects/" + pid + "/branches"

	st, raw := c.call("POST", branches, map[string]any{"branch": map[string]any{"name": "b1"}}, nil)
	if e := apiErr(t, raw); st != http.StatusLocked || e.Message != msgLocked {
		t.Fatalf("branch while project ops run: %d %s", st, raw)
	}
	c.waitOpsDone(pid, p.Operations)
	var br struct{ Branch Branch }
	c.call("GET", branches+"/"+p.Branch.ID, nil, &br)
	var eps struct{ Endpoints []Endpoint }
	c.call("GET", "/projects/"+pid+"/endpoints", nil, &eps)
	if br.Branch.CurrentState != BranchReady || br.Branch.PendingState != "" || len(eps.Endpoints) != 1 || eps.Endpoints[0].CurrentState != EndpointActive {
		t.Fatalf("after ops: branch %+v endpoints %+v", br.Branch, eps.Endpoints)
	}

	// A branch without endpoints: no connection_uris, roles without passwords.
	var b1 CreatedBranch
	st, raw = c.call("POST", branches, map[string]any{"branch": map[string]any{"name": "b1"}}, &b1)
	if st != 201 {
		t.Fatalf("create b1: %d %s", st, raw)
	}
	var rawB1 map[string]json.RawMessage
	_ = json.Unmarshal(raw, &rawB1)
	if _, ok := rawB1["connection_uris"]; ok || len(b1.Endpoints) != 0 || b1.Branch.ParentID != p.Branch.ID || b1.Branch.ParentLSN == "" {
		t.Errorf("b1: %s", raw)
	}
	if len(b1.Roles) != 1 || b1.Roles[0].Password != "" || b1.Roles[0].BranchID != b1.Branch.ID || len(b1.Databases) != 1 {
		t.Errorf("b1 roles/databases: %+v %+v", b1.Roles, b1.Databases)
	}
	if len(b1.Operations) != 1 || b1.Operations[0].Action != "create_branch" || b1.Operations[0].Status != OpRunning {
		t.Errorf("b1 ops %+v", b1.Operations)
	}
	c.waitOpsDone(pid, b1.Operations)

	// Duplicate name, second read_write endpoint, limit.
	st, raw = c.call("POST", branches, map[string]any{"branch": map[string]any{"name": "b1"}}, nil)
	if e := apiErr(t, raw); st != 409 || e.Message != `branch already exists; branch_name:"b1"` {
		t.Errorf("duplicate: %d %s", st, raw)
	}
	two := []map[string]any{{"type": "read_write"}, {"type": "read_write"}}
	if st, raw = c.call("POST", branches, map[string]any{"endpoints": two}, nil); st != 409 {
		t.Errorf("two read_write: %d %s", st, raw)
	}
	var b2 CreatedBranch
	st, raw = c.call("POST", branches, map[string]any{
		"branch":    map[string]any{"name": "b2", "parent_id": b1.Branch.ID},
		"endpoints": []map[string]any{{"type": "read_write"}},
	}, &b2)
	if st != 201 || len(b2.ConnectionURIs) != 1 || b2.ConnectionURIs[0].ConnectionParameters.Password != p.Roles[0].Password {
		t.Fatalf("create b2 (child of b1, with endpoint): %d %s", st, raw)
	}
	if ops := b2.Operations; len(ops) != 2 || ops[1].Action != "start_compute" || ops[1].Status != OpScheduling {
		t.Errorf("b2 ops %+v", ops)
	}
	c.waitOpsDone(pid, b2.Operations)
	st, raw = c.call("POST", branches, nil, nil) // body is optional
	if e := apiErr(t, raw); st != 422 || e.Code != "BRANCHES_LIMIT_EXCEEDED" {
		t.Errorf("limit: %d %s", st, raw)
	}

	t.Run("list", func(t *testing.T) {
		names := func(q string) []string {
			var out struct {
				Branches   []Branch
				Pagination map[string]string
			}
			if st, raw := c.call("GET", branches+q, nil, &out); st != 200 {
				t.Fatalf("%s: %d %s", q, st, raw)
			}
			var n []string
			for _, b := range out.Branches {
				n = append(n, b.Name)
			}
			if next := out.Pagination["next"]; next != "" {
				n = append(n, "next")
			}
			return n
		}
		if got := names("?sort_by=name&sort_order=asc"); !slices.Equal(got, []string{"b1", "b2", "main"}) {
			t.Errorf("by name: %v", got)
		}
		if got := names("?sort_by=created_at&sort_order=desc&limit=2"); !slices.Equal(got, []string{"b2", "b1", "next"}) {
			t.Errorf("newest two: %v", got)
		}
		var first struct{ Pagination map[string]string }
		c.call("GET", branches+"?sort_by=created_at&sort_order=desc&limit=2", nil, &first)
		if got := names("?sort_by=created_at&sort_order=desc&limit=2&cursor=" + first.Pagination["next"]); !slices.Equal(got, []string{"main"}) {
			t.Errorf("second page: %v", got)
		}
		// Search matches names and IDs; an ID's random suffix may hold "b2"
		// too (about 1 run in 100), so that branch is expected as well.
		var all struct{ Branches []Branch }
		c.call("GET", branches+"?sort_by=name&sort_order=asc", nil, &all)
		var want []string
		for _, b := range all.Branches {
			if b.Name == "b2" || strings.Contains(b.ID, "b2") {
				want = append(want, b.Name)
			}
		}
		if got := names("?search=b2&sort_by=name&sort_order=asc"); !slices.Equal(got, want) || !slices.Contains(got, "b2") {
			t.Errorf("search: %v, want %v", got, want)
		}
		var count struct{ Count int }
		if c.call("GET", branches+"/count", nil, &count); count.Count != 3 {
			t.Errorf("count %d", count.Count)
		}
	})

	t.Run("connection uri", func(t *testing.T) {
		var u struct{ URI string }
		q := "/projects/" + pid + "/connection_uri?database_name=neondb&role_name=neondb_owner&branch_id=" + b2.Branch.ID
		if st, raw := c.call("GET", q+"&pooled=true", nil, &u); st != 200 || !strings.Contains(u.URI, b2.Endpoints[0].ID+"-pooler.c-2.") ||
			!strings.HasSuffix(u.URI, "/neondb?sslmode=require&channel_binding=require") {
			t.Errorf("pooled: %d %s", st, raw)
		}
		if c.call("GET", q+"&pooled=false", nil, &u); strings.Contains(u.URI, "-pooler") {
			t.Errorf("direct: %s", u.URI)
		}
		if st, _ := c.call("GET", "/projects/"+pid+"/connection_uri?database_name=neondb&role_name=nobody", nil, nil); st != 404 {
			t.Errorf("unknown role: %d", st)
		}
	})

	t.Run("delete", func(t *testing.T) {
		st, raw := c.call("DELETE", branches+"/"+p.Branch.ID, nil, nil)
		if st/100 != 4 || apiErr(t, raw).Message == "" {
			t.Errorf("delete default branch: %d %s", st, raw)
		}
		if st, raw = c.call("DELETE", branches+"/"+b1.Branch.ID, nil, nil); st/100 != 4 {
			t.Errorf("delete parent of b2: %d %s", st, raw)
		}
		var del struct {
			Branch     Branch
			Operations []Operation
		}
		if st, raw = c.call("DELETE", branches+"/"+b2.Branch.ID, nil, &del); st != 200 {
			t.Fatalf("delete b2: %d %s", st, raw)
		}
		var actions []string
		for _, op := range del.Operations {
			actions = append(actions, op.Action)
		}
		if !slices.Equal(actions, []string{"suspend_compute", "delete_timeline"}) || del.Branch.PendingState != "storage_deleted" {
			t.Errorf("delete answer %+v", del)
		}
		if st, _ = c.call("DELETE", branches+"/"+b1.Branch.ID, nil, nil); st != 423 {
			t.Errorf("delete while b2's deletion runs: %d", st)
		}
		c.waitOpsDone(pid, del.Operations)
		if st, raw = c.call("DELETE", branches+"/"+b2.Branch.ID, nil, nil); st != 204 || len(raw) != 0 {
			t.Errorf("delete again: %d %q", st, raw)
		}
		if st, raw = c.call("GET", branches+"/"+b2.Branch.ID, nil, nil); st != 404 || apiErr(t, raw).Message != "branch not found" {
			t.Errorf("get deleted: %d %s", st, raw)
		}
		if st, _ = c.call("GET", "/projects/"+pid+"/endpoints/"+b2.Endpoints[0].ID, nil, nil); st != 404 {
			t.Errorf("endpoint of deleted branch: %d", st)
		}
	})

	t.Run("operations list", func(t *testing.T) {
		var out struct {
			Operations []Operation
			Pagination struct{ Cursor string }
		}
		c.call("GET", "/projects/"+pid+"/operations?limit=3", nil, &out)
		if len(out.Operations) != 3 || out.Operations[0].Action != "delete_timeline" || out.Pagination.Cursor == "" {
			t.Fatalf("first page %+v", out)
		}
		var rest struct{ Operations []Operation }
		c.call("GET", "/projects/"+pid+"/operations?cursor="+out.Pagination.Cursor, nil, &rest)
		if total := len(out.Operations) + len(rest.Operations); total != len(srv.Operations(pid)) {
			t.Errorf("paged %d operations, have %d", total, len(srv.Operations(pid)))
		}
	})
}

// TestFaults: FailNext, DropAfterCreate, FailNextOperation, the request log.
func TestFaults(t *testing.T) {
	pgtest.CheckGoroutines(t)
	srv := newServer(t, Config{})
	c := newClient(t, srv, "k")

	srv.FailNext("POST", "/projects", http.StatusTooManyRequests, 2)
	srv.FailNext("", "/projects/{project_id}", http.StatusServiceUnavailable, 1)
	for i, want := range []int{429, 429, 201} {
		st, raw := c.call("POST", "/projects", map[string]any{"project": map[string]any{"name": "f"}}, nil)
		if st != want {
			t.Fatalf("attempt %d: %d %s, want %d", i, st, raw, want)
		}
		if st == 429 && apiErr(t, raw).Message != "rate limit exceeded" {
			t.Errorf("429 body %s", raw)
		}
	}
	if n := len(srv.Projects()); n != 1 {
		t.Fatalf("%d projects after two 429s and a 201", n)
	}
	pid := srv.Projects()[0].ID
	if st, _ := c.call("GET", "/projects/"+pid, nil, nil); st != 503 {
		t.Errorf("503 injection: %d", st)
	}
	if st, _ := c.call("GET", "/projects/"+pid, nil, nil); st != 200 {
		t.Errorf("after 503: %d", st)
	}
	srv.FailNext("GET", "/projects", 524, 1)
	st, raw := c.call("GET", "/projects", nil, nil)
	if st != 524 || !strings.Contains(string(raw), "<html>") {
		t.Errorf("524: %d %s", st, raw)
	}
	var statuses []int
	for _, r := range srv.Requests() {
		statuses = append(statuses, r.Status)
	}
	if want := []int{429, 429, 201, 503, 200, 524}; !slices.Equal(statuses, want) {
		t.Errorf("request log statuses %v, want %v", statuses, want)
	}

	// DropAfterCreate: the client sees no answer, yet the branch exists.
	if err := srv.WaitIdle(t.Context(), pid); err != nil {
		t.Fatal(err)
	}
	srv.DropAfterCreate(1)
	if _, _, err := c.try("POST", "/projects/"+pid+"/branches", map[string]any{"branch": map[string]any{"name": "lost"}}, nil); err == nil {
		t.Fatal("DropAfterCreate: the client got an answer")
	}
	var list struct{ Branches []Branch }
	c.call("GET", "/projects/"+pid+"/branches?search=lost", nil, &list)
	if len(list.Branches) != 1 || list.Branches[0].Name != "lost" {
		t.Errorf("dropped create: %+v", list.Branches)
	}
	// The dropped request is logged when its handler returns, which may be
	// after the client has already moved on: poll for it.
	droppedLogged := func() bool {
		for _, r := range srv.Requests() {
			if r.Method == "POST" && r.Status == 0 && strings.HasSuffix(r.Path, "/branches") {
				return true
			}
		}
		return false
	}
	poll.Until(t, 10*time.Second, "the dropped request to be logged with status 0", droppedLogged)

	// FailNextOperation: the op fails, the rest of its request is cancelled,
	// the branch stays init and cannot be branched from.
	if err := srv.WaitIdle(t.Context(), pid); err != nil {
		t.Fatal(err)
	}
	srv.FailNextOperation("create_branch")
	var bad CreatedBranch
	c.call("POST", "/projects/"+pid+"/branches", map[string]any{"branch": map[string]any{"name": "bad"}, "endpoints": []map[string]any{{"type": "read_write"}}}, &bad)
	if err := srv.WaitIdle(t.Context(), pid); err != nil {
		t.Fatal(err)
	}
	var op1, op2 struct{ Operation Operation }
	c.call("GET", "/projects/"+pid+"/operations/"+bad.Operations[0].ID, nil, &op1)
	c.call("GET", "/projects/"+pid+"/operations/"+bad.Operations[1].ID, nil, &op2)
	if op1.Operation.Status != OpFailed || op1.Operation.Error == "" || op2.Operation.Status != OpCancelled {
		t.Errorf("ops after injected failure: %+v %+v", op1.Operation, op2.Operation)
	}
	st, raw = c.call("POST", "/projects/"+pid+"/branches", map[string]any{"branch": map[string]any{"parent_id": bad.Branch.ID}}, nil)
	if st != 422 || apiErr(t, raw).Message != "branch not ready yet" {
		t.Errorf("branch from failed branch: %d %s", st, raw)
	}
}

// TestCreateHelpers: the Go helpers wait for their operations.
func TestCreateHelpers(t *testing.T) {
	pgtest.CheckGoroutines(t)
	srv := newServer(t, Config{})
	ctx := t.Context()
	p, err := srv.CreateProject(ctx, "helper")
	if err != nil {
		t.Fatal(err)
	}
	if p.Branch.CurrentState != BranchReady || p.Endpoints[0].CurrentState != EndpointActive || p.Operations[1].Status != OpFinished {
		t.Errorf("CreateProject did not wait: %+v %+v", p.Branch, p.Operations)
	}
	b, err := srv.CreateBranch(ctx, p.Project.ID, "x")
	if err != nil {
		t.Fatal(err)
	}
	if b.Branch.CurrentState != BranchReady || len(srv.Branches(p.Project.ID)) != 2 || len(srv.Endpoints(p.Project.ID)) != 2 {
		t.Errorf("CreateBranch: %+v", b.Branch)
	}
	if _, err := srv.CreateBranch(ctx, p.Project.ID, "x"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("duplicate via helper: %v", err)
	}
	start := time.Now()
	srv.FailNextOperation("start_compute")
	if _, err := srv.CreateBranch(ctx, p.Project.ID, "y"); err == nil {
		t.Error("failed start_compute: no error")
	}
	if time.Since(start) > 5*time.Second {
		t.Error("slow")
	}
}
