package admin_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/poll"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

// TestAPIMigrations runs POST /v1/migrations on a real router: 202 and a
// run in the background, 409 for a second run while it runs, GET showing
// it until it is done, the tenants' schemas at the target; auth and bad
// bodies.
func TestAPIMigrations(t *testing.T) {
	dir := t.TempDir()
	write := func(name, sql string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sql), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0001_items.sql", "CREATE TABLE items (id int);")
	// Waits for the test's advisory lock in the tenant's database: the run
	// stays running until the test lets it go.
	write("0002_price.sql", "SELECT pg_advisory_xact_lock(4242);\nALTER TABLE items ADD price numeric;")
	e := startEnv(t, withRouter(func(c *pgrouter.Config) {
		c.Migrations.Dir, c.Migrations.Canary, c.Migrations.Concurrency = dir, 0, 1
	}))
	tenants := []string{newTenant("mig"), newTenant("mig"), newTenant("mig")}
	slices.Sort(tenants)
	for _, tenant := range tenants {
		if _, err := e.res.Ensure(context.Background(), tenant); err != nil {
			t.Fatal(err)
		}
	}

	// Auth and bad requests.
	if status, _ := e.send(t, "POST", "/v1/migrations", "", `{"action":"up"}`); status != 401 {
		t.Errorf("POST without token: %d", status)
	}
	if status, _ := e.call(t, "GET", "/v1/migrations", "wrong"); status != 401 {
		t.Errorf("GET with a wrong token: %d", status)
	}
	for _, body := range []string{``, `{`, `{"action":"sideways"}`, `{"action":"up","bogus":1}`, `{"action":"up","concurrency":0}`,
		`{"action":"up","max_fail_share":2}`, `{"action":"up","tenants":["no such id!"]}`, `{"action":"up","to":9}`, `{"action":"status","to":1}`} {
		if status, b := e.send(t, "POST", "/v1/migrations", adminToken, body); status != 400 || !json.Valid([]byte(b)) {
			t.Errorf("POST %s: %d %s, want 400", body, status, b)
		}
	}

	// Hold the first tenant's run at 0002.
	lock, err := e.connect(t, tenants[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(context.Background(), "SELECT pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	var run admin.MigrationRun
	status, body := e.send(t, "POST", "/v1/migrations", adminToken, `{"action":"up"}`)
	if status != 202 || json.Unmarshal([]byte(body), &run) != nil || run.ID == "" || run.State != "running" ||
		*run.Request.Concurrency != 1 || *run.Request.Canary != 0 {
		t.Fatalf("POST up: %d %s", status, body)
	}
	var st admin.MigrationStatus
	poll.Until(t, 30*time.Second, "the run waiting on the lock", func() bool {
		e.do(t, "GET", "/v1/migrations", 200, &st)
		return len(st.Running) == 1 && st.Running[0].Name == tenants[0]
	})
	if st.Run == nil || st.Run.ID != run.ID || st.Run.State != "running" || st.Target != 2 {
		t.Fatalf("GET while running: %+v", st)
	}
	if status, body := e.send(t, "POST", "/v1/migrations", adminToken, `{"action":"up","tenants":["`+tenants[1]+`"]}`); status != 409 ||
		!strings.Contains(body, "already running") || !strings.Contains(body, run.ID) {
		t.Fatalf("second POST up while running: %d %s", status, body)
	}
	if err := lock.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, "the run to finish", func() bool {
		e.do(t, "GET", "/v1/migrations", 200, &st)
		return st.Run.State != "running"
	})
	r := st.Run
	if r.State != "ok" || r.FinishedAt == nil || r.Report == nil || r.Report.Done != 3 || r.Report.Applied != 6 || r.Report.Target != 2 ||
		r.Progress != (admin.MigrationProgress{Done: 3, Total: 3}) {
		t.Fatalf("finished run: %+v report %+v", r, r.Report)
	}
	if st.Tenants != 3 || st.Versions[2] != 3 || st.Unknown != 0 || len(st.Failed) != 0 || !slices.Equal(st.Registered, []string{"0001_items.sql", "0002_price.sql"}) {
		t.Fatalf("status after the run: %+v", st)
	}
	for _, tenant := range tenants {
		conn, err := e.connect(t, tenant)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if err := conn.QueryRow(context.Background(),
			"SELECT string_agg(version::text, ',' ORDER BY version) || ' ' || (SELECT count(price) FROM items) FROM pgtenant_migrations").Scan(&got); err != nil || got != "1,2 0" {
			t.Errorf("tenant %s: %q %v", tenant, got, err)
		}
	}
	// POST status is GET.
	var st2 admin.MigrationStatus
	if status, body := e.send(t, "POST", "/v1/migrations", adminToken, `{"action":"status"}`); status != 200 || json.Unmarshal([]byte(body), &st2) != nil ||
		st2.Versions[2] != 3 || st2.Run.ID != run.ID {
		t.Fatalf("POST status: %d %s", status, body)
	}

	// An edited file is refused before anything runs.
	write("0001_items.sql", "CREATE TABLE items (id bigint);")
	if status, body := e.send(t, "POST", "/v1/migrations", adminToken, `{"action":"up"}`); status != 409 || !strings.Contains(body, "0001_items.sql") {
		t.Fatalf("POST up with an edited file: %d %s", status, body)
	}
}

// TestAPIMigrationsNoDir: a router without migrations.dir refuses a run
// and says what to set, and still shows the status.
func TestAPIMigrationsNoDir(t *testing.T) {
	e := startEnv(t)
	status, body := e.send(t, "POST", "/v1/migrations", adminToken, `{"action":"up"}`)
	if status != 409 || !strings.Contains(body, "migrations.dir") {
		t.Fatalf("POST up without migrations.dir: %d %s", status, body)
	}
	var st admin.MigrationStatus
	e.do(t, "GET", "/v1/migrations", 200, &st)
	if st.Run != nil || st.Target != 0 {
		t.Fatalf("status: %+v", st)
	}
}
