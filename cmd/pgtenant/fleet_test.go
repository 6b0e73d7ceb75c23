package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

// These tests run a fleet as operators do: several `pgtenant serve`
// processes (this test binary re-run as pgtenant, see asPgtenantEnv) sharing
// one catalog. router/cluster_test.go tests the same cluster code with the
// routers in this process; here an instance dies by SIGKILL, and each
// process has its own open-file limit.

const fleetSecret = "fleet-process-test-secret"

// fleet is a catalog and the environment of the routers sharing it.
type fleet struct {
	t       *testing.T
	c       *localproc.Cluster
	dir     string
	env     []string
	catalog string // the catalog's DSN
}

func newFleet(t *testing.T) *fleet {
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	f := &fleet{t: t, c: c, dir: t.TempDir(), catalog: c.AdminDSN(db)}
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case router.EnvPassword, router.EnvAdminDSN, router.EnvCatalogDSN, router.EnvCatalogKey, router.EnvClusterSecret,
			router.EnvClusterAdvertise, router.EnvAdminToken, router.EnvNeonAPIKey, asPgtenantEnv:
			continue
		}
		f.env = append(f.env, kv)
	}
	f.env = append(f.env, asPgtenantEnv+"=1",
		router.EnvPassword+"="+fleetSecret,
		router.EnvAdminDSN+"="+c.AdminDSN("postgres"),
		router.EnvCatalogDSN+"="+f.catalog,
		router.EnvCatalogKey+"="+catalog.NewKey(),
		router.EnvClusterSecret+"=fleet-process-test-cluster-secret-0123456789")
	return f
}

// start runs instance id of the fleet as `pgtenant serve` on listen, with
// config appended to the fleet's common settings.
func (f *fleet) start(id int, listen, config string) *localproc.Router {
	f.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		f.t.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(listen)
	// The routers are this test binary, with -race in CI: SCRAM for
	// hundreds of clients at once takes longer than the 10 s default.
	cfg := fmt.Sprintf(`listen: %s
instance_id: %d
drain_timeout: 0s
handshake_timeout: 2m
log:
  level: warn
cluster:
  peer_listen: %s:0
  heartbeat: 100ms
  expire: 1s
provider:
  local:
    prefix: fl_
%s`, listen, id, host, config)
	path := filepath.Join(f.dir, fmt.Sprintf("router%d.yaml", id))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := localproc.StartRouter(ctx, localproc.RouterConfig{
		Binary: exe, Config: path, Env: f.env, LogPath: filepath.Join(f.dir, fmt.Sprintf("router%d.log", id)),
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = r.Stop(ctx)
		if f.t.Failed() {
			b, _ := os.ReadFile(filepath.Join(f.dir, fmt.Sprintf("router%d.log", id)))
			f.t.Logf("router %d log:\n%s", id, b)
		}
	})
	return r
}

// instances lists the live registry entries.
func (f *fleet) instances(ctx context.Context) []uint8 {
	f.t.Helper()
	conn, err := pgx.Connect(ctx, f.catalog)
	if err != nil {
		f.t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT instance_id FROM pgtenant.instances WHERE expires_at > now() ORDER BY instance_id`)
	if err != nil {
		f.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int16])
	if err != nil {
		f.t.Fatal(err)
	}
	out := make([]uint8, len(ids))
	for i, id := range ids {
		out[i] = uint8(id)
	}
	return out
}

func fleetDSN(tenant, addr string) string {
	return "postgres://" + tenant + ":" + fleetSecret + "@" + addr + "/app?sslmode=disable"
}

// cancelVia sends pc's cancel key to addr as a bare CancelRequest.
func cancelVia(t *testing.T, addr string, pc *pgconn.PgConn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := binary.BigEndian.AppendUint32(nil, uint32(12+len(pc.SecretKey())))
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pc.PID())
	b = append(b, pc.SecretKey()...)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Read(make([]byte, 1)) // the router closes once it has acted
}

// sleeping runs pg_sleep(30) on conn and returns what it ended with.
func sleeping(conn *pgx.Conn) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), "SELECT pg_sleep(30)")
		done <- err
	}()
	return done
}

// TestServeFleet runs three `pgtenant serve` processes on one catalog: first
// connects spread over them create each tenant once, a query started
// through one is cancelled by a CancelRequest sent to another, and after one
// is killed with SIGKILL the others' sessions go on and its registry entry
// expires.
func TestServeFleet(t *testing.T) {
	f := newFleet(t)
	routers := []*localproc.Router{
		f.start(1, "127.0.0.1:0", ""),
		f.start(2, "127.0.0.1:0", ""),
		f.start(3, "127.0.0.1:0", ""),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	poll.Until(t, 10*time.Second, "the three instances to register", func() bool { return len(f.instances(ctx)) == 3 })

	// 300 first connects for 30 new tenants, spread over the three.
	const tenants, clients = 30, 300
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := make(chan struct{})
	for i := range clients {
		tenant := fmt.Sprintf("storm%02d", i%tenants)
		addr := routers[i%len(routers)].Addr()
		wg.Go(func() {
			<-start
			conn, err := pgx.Connect(ctx, fleetDSN(tenant, addr))
			if err != nil {
				errs <- fmt.Errorf("%s via %s: %w", tenant, addr, err)
				return
			}
			defer conn.Close(context.Background())
			var db string
			if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
				errs <- err
			} else if db != "fl_"+tenant {
				errs <- fmt.Errorf("%s landed in %s", tenant, db)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := query(t, f.c.AdminDSN("postgres"), `SELECT count(*)::text FROM pg_database WHERE datname LIKE 'fl\_storm%'`); got != strconv.Itoa(tenants) {
		t.Errorf("%s databases for %d tenants", got, tenants)
	}

	// Sessions on each instance; instance 1's query is cancelled through
	// instances 2 and 3.
	sessions := make([]*pgx.Conn, len(routers))
	for i, r := range routers {
		conn, err := pgx.Connect(ctx, fleetDSN("held", r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		sessions[i] = conn
	}
	for _, via := range routers[1:] {
		done := sleeping(sessions[0])
		poll.Until(t, 10*time.Second, "pg_sleep to run upstream", func() bool {
			return query(t, f.c.AdminDSN("postgres"), `SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND datname = 'fl_held'`) == "1"
		})
		at := time.Now()
		cancelVia(t, via.Addr(), sessions[0].PgConn())
		select {
		case err := <-done:
			if pgErr := (*pgconn.PgError)(nil); err == nil || !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("cancelled through %s: %v, want 57014", via.Addr(), err)
			}
			t.Logf("cancelled through another process in %v", time.Since(at).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatalf("a cancel sent to %s did not reach instance 1's query", via.Addr())
		}
	}

	// SIGKILL instance 3: no drain, no deregistration.
	if err := syscall.Kill(routers[2].PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-routers[2].Done()
	if _, err := sessions[2].Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a session of the killed instance still answers")
	}
	poll.Until(t, 10*time.Second, "instance 3's registry entry to expire", func() bool {
		ids := f.instances(ctx)
		return len(ids) == 2 && ids[0] == 1 && ids[1] == 2
	})
	for i, conn := range sessions[:2] {
		var n int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatalf("instance %d's session after instance 3 was killed: %v", i+1, err)
		}
	}
	done := sleeping(sessions[1])
	poll.Until(t, 10*time.Second, "pg_sleep to run upstream", func() bool {
		return query(t, f.c.AdminDSN("postgres"), `SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND datname = 'fl_held'`) == "1"
	})
	cancelVia(t, routers[0].Addr(), sessions[1].PgConn())
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("pg_sleep(30) ended without error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("instance 2's query was not cancelled through instance 1 after instance 3 died")
	}
	// The freed ID can be taken again.
	r3 := f.start(3, "127.0.0.1:0", "")
	poll.Until(t, 10*time.Second, "instance 3 to register again", func() bool { return len(f.instances(ctx)) == 3 })
	if got := query(t, fleetDSN("held", r3.Addr()), "SELECT current_database()"); got != "fl_held" {
		t.Fatalf("restarted instance 3 routed to %s", got)
	}
}

// fanoutSize is TestFleetFanout's size: small by default (CI), set by
// PGTENANT_FLEET_CONNS, PGTENANT_FLEET_TENANTS and PGTENANT_FLEET_HOLD
// for the measurement in BENCHMARKS.md.
func fanoutSize(t *testing.T) (conns, tenants int, hold time.Duration) {
	conns, tenants, hold = 600, 60, 3*time.Second
	if v := os.Getenv("PGTENANT_FLEET_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGTENANT_FLEET_CONNS: %v", err)
		}
		conns = n
	}
	if v := os.Getenv("PGTENANT_FLEET_TENANTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGTENANT_FLEET_TENANTS: %v", err)
		}
		tenants = n
	}
	if v := os.Getenv("PGTENANT_FLEET_HOLD"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PGTENANT_FLEET_HOLD: %v", err)
		}
		hold = d
	}
	if tenants%3 != 0 || conns%tenants != 0 {
		t.Fatalf("%d connections over %d tenants: want tenants a multiple of 3 and connections a multiple of tenants", conns, tenants)
	}
	return conns, tenants, hold
}

// TestFleetFanout holds connections over many tenants through three router
// processes, one per loopback address, each with its own client process
// (`pgtenant bench --scenario idle`): every process has its own open-file
// limit, and every (client address, router address) pair its own
// ephemeral ports, which is how one host goes past one process's limit.
// The routers pool upstream connections (transaction mode), so the held
// clients cost no Postgres connection. Each client process reports the
// connections it held and its errors; every connection is then probed
// with a query, and all must succeed.
func TestFleetFanout(t *testing.T) {
	conns, tenants, hold := fanoutSize(t)
	f := newFleet(t)
	// What this cluster leaves for the routers' pools, split over three.
	maxConns, err := strconv.Atoi(query(t, f.c.AdminDSN("postgres"), "SHOW max_connections"))
	if err != nil {
		t.Fatal(err)
	}
	budget := max(2, (maxConns-40)/3/2) // other tests share this cluster
	perRouter := conns / 3
	pool := fmt.Sprintf(`limits:
  max_connections: %d
  max_handshakes: %d
  max_concurrent_creates: 8
pool:
  mode: transaction
  max_server_connections: %d
`, perRouter+100, perRouter+100, budget)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	var wg sync.WaitGroup
	reports := make([]*bench.Report, 3)
	outs := make([][]byte, 3)
	runErrs := make([]error, 3)
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.%d", i+1)
		r := f.start(i+1, addr+":0", pool)
		jsonPath := filepath.Join(f.dir, fmt.Sprintf("bench%d.json", i+1))
		args := []string{
			"bench", "--dsn", fleetDSN("{tenant}", r.Addr()),
			"--label", fmt.Sprintf("router%d", i+1),
			"--scenario", "idle", "--tenants", strconv.Itoa(tenants / 3),
			"--tenant-prefix", fmt.Sprintf("f%d_", i+1),
			"--conns-per-tenant", strconv.Itoa(conns / tenants),
			"--duration", hold.String(), "--rounds", "1",
			"--concurrency", "32", "--connect-timeout", "60s", "--query-timeout", "10m",
			"--pid", strconv.Itoa(r.PID()), "--json", jsonPath,
		}
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, exe, args...)
			cmd.Env = f.env
			outs[i], runErrs[i] = cmd.CombinedOutput()
			b, err := os.ReadFile(jsonPath)
			if err != nil {
				if runErrs[i] == nil {
					runErrs[i] = err
				}
				return
			}
			var rep bench.Report
			if err := json.Unmarshal(b, &rep); err != nil {
				runErrs[i] = err
				return
			}
			reports[i] = &rep
		})
	}
	wg.Wait()
	var held, failed int64
	for i, rep := range reports {
		if runErrs[i] != nil || rep == nil {
			t.Fatalf("client process %d: %v\n%s", i+1, runErrs[i], outs[i])
		}
		t.Logf("client process %d:\n%s", i+1, outs[i])
		for _, sc := range rep.Scenarios {
			for _, res := range sc.Results {
				held += res.HeldConns
				failed += res.ErrorsTotal
				if res.ErrorsTotal != 0 {
					t.Errorf("client process %d: %d errors %v", i+1, res.ErrorsTotal, res.Errors)
				}
			}
		}
	}
	t.Logf("%d connections held over %d tenants through 3 router processes for %v, %d errors", held, tenants, hold, failed)
	if held != int64(conns) {
		t.Errorf("held %d connections at once, want %d", held, conns)
	}
}
