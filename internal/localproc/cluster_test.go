package localproc_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/poll"
)

// These tests drive StartCluster directly (internal/pgtest hides Dir, and
// restarts need it), so they repeat pgtest's two rules: clusters live
// outside t.TempDir (0700, untraversable by the postgres OS user when we
// are root), and missing binaries skip except under CI=true.

// clusterDir returns a directory for ClusterConfig.Dir, removed in cleanup.
func clusterDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// start starts a cluster in dir and stops it in cleanup unless the test has
// already seen it exit.
func startCluster(t *testing.T, cfg localproc.ClusterConfig) *localproc.Cluster {
	t.Helper()
	if cfg.Settings == nil {
		cfg.Settings = map[string]string{"fsync": "off"}
	}
	cfg.Log = slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := localproc.StartCluster(ctx, cfg)
	if errors.Is(err, localproc.ErrNoPostgres) {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); !ci {
			t.Skipf("no PostgreSQL to test against: %v", err)
		}
	}
	if err != nil {
		t.Fatalf("StartCluster: %v", err)
	}
	t.Cleanup(func() {
		select {
		case <-c.Done():
			return // the test stopped or killed it and checked the outcome
		default:
		}
		if err := c.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return c
}

func clusterConn(t *testing.T, dsn string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// query returns the rows of sql, each row's columns joined by "|".
func clusterQuery(t *testing.T, conn *pgconn.PgConn, sql string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var rows []string
	for _, r := range res {
		for _, row := range r.Rows {
			cols := make([]string, len(row))
			for i, v := range row {
				cols[i] = string(v)
			}
			rows = append(rows, strings.Join(cols, "|"))
		}
	}
	return rows
}

func clusterQuery1(t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	rows := clusterQuery(t, conn, sql)
	if len(rows) != 1 {
		t.Fatalf("%s: got %d rows %q, want 1", sql, len(rows), rows)
	}
	return rows[0]
}

func readClusterFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestStartCluster(t *testing.T) {
	dir := clusterDir(t)
	c := startCluster(t, localproc.ClusterConfig{Dir: dir, Settings: map[string]string{"fsync": "off", "work_mem": "7MB"}})

	if c.Host() != "127.0.0.1" || c.AdminUser() != "postgres" {
		t.Errorf("Host, AdminUser = %q, %q", c.Host(), c.AdminUser())
	}
	if c.Port() < 15000 || c.Port() > 32767 {
		t.Errorf("Port = %d, want a random port in [15000, 32767]", c.Port())
	}
	if got := readClusterFile(t, filepath.Join(dir, "port")); got != strconv.Itoa(int(c.Port())) {
		t.Errorf("Dir/port = %q, want %d", got, c.Port())
	}
	if got := readClusterFile(t, filepath.Join(dir, "admin.password")); got != c.AdminPassword() || len(got) < 32 {
		t.Errorf("Dir/admin.password = %q, want the %d-char AdminPassword", got, len(c.AdminPassword()))
	}
	wantDSN := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/db1?sslmode=disable", c.AdminPassword(), c.Port())
	if got := c.AdminDSN("db1"); got != wantDSN {
		t.Errorf("AdminDSN = %q, want %q", got, wantDSN)
	}
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %s", c, c, c)} {
		if strings.Contains(s, c.AdminPassword()) {
			t.Errorf("formatted cluster leaks the password: %s", s)
		}
	}

	conn := clusterConn(t, c.AdminDSN("postgres"))
	if got := clusterQuery1(t, conn, "SELECT current_user || ' ' || (1+1)"); got != "postgres 2" {
		t.Errorf("query = %q", got)
	}
	settings := []struct{ name, want string }{
		{"listen_addresses", "127.0.0.1"},
		{"unix_socket_directories", ""},
		{"password_encryption", "scram-sha-256"},
		{"port", strconv.Itoa(int(c.Port()))},
		{"fsync", "off"},
		{"work_mem", "7MB"},
		{"server_encoding", "UTF8"},
		{"lc_collate", "C"},
	}
	for _, s := range settings {
		if got := clusterQuery1(t, conn, "SHOW "+s.name); got != s.want {
			t.Errorf("SHOW %s = %q, want %q", s.name, got, s.want)
		}
	}

	// Authentication: SCRAM everywhere, and only loopback TCP is admitted.
	if got := clusterQuery1(t, conn, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'postgres'"); got != "SCRAM-SHA-256$" {
		t.Errorf("admin password stored as %q..., want a SCRAM verifier", got)
	}
	hba := clusterQuery(t, conn, "SELECT type, coalesce(address, ''), auth_method, coalesce(error, '') FROM pg_hba_file_rules ORDER BY line_number")
	wantHBA := []string{"host|127.0.0.1|scram-sha-256|", "host|::1|scram-sha-256|"}
	if strings.Join(hba, "\n") != strings.Join(wantHBA, "\n") {
		t.Errorf("pg_hba rules:\n%s\nwant:\n%s", strings.Join(hba, "\n"), strings.Join(wantHBA, "\n"))
	}

	// Ownership and modes: the password is ours alone, PGDATA is postgres'.
	fi, err := os.Stat(filepath.Join(dir, "admin.password"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("admin.password mode %v, want 0600", fi.Mode().Perm())
	}
	fi, err = os.Stat(filepath.Join(dir, "pgdata"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("pgdata mode %v, want 0700", fi.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != u.Uid {
			t.Errorf("pgdata owned by uid %d, want postgres (%s)", uid, u.Uid)
		}
	}
	if log := readClusterFile(t, filepath.Join(dir, "postgres.log")); !strings.Contains(log, "database system is ready to accept connections") {
		t.Errorf("postgres.log lacks the server's output:\n%s", log)
	}
}

func TestWrongPasswordIsRejected(t *testing.T) {
	c := startCluster(t, localproc.ClusterConfig{Dir: clusterDir(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("postgres://postgres:wrong@127.0.0.1:%d/postgres?sslmode=disable", c.Port())
	conn, err := pgconn.Connect(ctx, dsn)
	if err == nil {
		_ = conn.Close(ctx)
		t.Fatal("connected with a wrong password")
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "28P01" {
		t.Fatalf("got %v, want invalid_password (28P01)", err)
	}
	if strings.Contains(err.Error(), c.AdminPassword()) {
		t.Fatal("error leaks the admin password")
	}
}

func TestRestartKeepsDataPortAndPassword(t *testing.T) {
	dir := clusterDir(t)
	c1 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	conn := clusterConn(t, c1.AdminDSN("postgres"))
	clusterQuery(t, conn, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
	_ = conn.Close(context.Background())
	if err := c1.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	c2 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	if c2.Port() != c1.Port() {
		t.Errorf("port after restart = %d, want %d", c2.Port(), c1.Port())
	}
	if c2.AdminPassword() != c1.AdminPassword() {
		t.Error("admin password changed across restart")
	}
	conn = clusterConn(t, c2.AdminDSN("postgres"))
	if got := clusterQuery1(t, conn, "SELECT v FROM kept"); got != "still here" {
		t.Errorf("after restart: %q", got)
	}
}

func TestStopIsIdempotent(t *testing.T) {
	c := startCluster(t, localproc.ClusterConfig{Dir: clusterDir(t)})
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() { errs[i] = c.Stop(context.Background()) })
	}
	wg.Wait()
	errs = append(errs, c.Stop(context.Background()))
	for i, err := range errs {
		if err != nil {
			t.Errorf("Stop #%d: %v", i, err)
		}
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Stop returned")
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err after a clean stop: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if conn, err := pgconn.Connect(ctx, c.AdminDSN("postgres")); err == nil {
		_ = conn.Close(ctx)
		t.Error("connected to a stopped cluster")
	}
}

// postmasterPID reads the pid of the running postmaster from its lock file.
func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	first, _, _ := strings.Cut(readClusterFile(t, filepath.Join(dir, "pgdata", "postmaster.pid")), "\n")
	pid, err := strconv.Atoi(first)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestDoneClosesWhenPostgresIsKilled(t *testing.T) {
	dir := clusterDir(t)
	c := startCluster(t, localproc.ClusterConfig{Dir: dir})
	pid := postmasterPID(t, dir)
	select {
	case <-c.Done():
		t.Fatal("Done closed while postgres runs")
	default:
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err while running: %v", err)
	}

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("Done not closed 30s after the postmaster was killed")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "exited unexpectedly") {
		t.Errorf("Err = %v, want an unexpected exit", err)
	}
	if err := c.Stop(context.Background()); err == nil {
		t.Error("Stop of a crashed cluster returned nil")
	}
	// The killed postmaster left postmaster.pid behind, and children (each
	// in a session of its own) still attached to its shared memory for a
	// moment: a restart at once waits for them and copes.
	c2 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	if c2.Port() != c.Port() {
		t.Errorf("port after crash restart = %d, want %d", c2.Port(), c.Port())
	}
	clusterQuery1(t, clusterConn(t, c2.AdminDSN("postgres")), "SELECT 1")
}

// TestRestartWaitsForBusyOrphans: a backend busy in a query when its
// postmaster is killed notices the death only when it next waits, so it
// keeps the shared memory attached until the query ends. A restart waits
// for it rather than fail with "pre-existing shared memory block ... is
// still in use".
func TestRestartWaitsForBusyOrphans(t *testing.T) {
	dir := clusterDir(t)
	c := startCluster(t, localproc.ClusterConfig{Dir: dir})
	busy, watch := clusterConn(t, c.AdminDSN("postgres")), clusterConn(t, c.AdminDSN("postgres"))
	// A loop checks for interrupts but not for the postmaster's death.
	const spin = `DO $$ BEGIN WHILE clock_timestamp() < now() + interval '2 s' LOOP END LOOP; END $$`
	var spinErr error
	spun := make(chan struct{})
	go func() {
		defer close(spun)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, spinErr = busy.Exec(ctx, spin).ReadAll()
	}()
	t.Cleanup(func() { <-spun }) // before busy is closed, even if we fail
	poll.Until(t, 10*time.Second, "the busy query to run", func() bool {
		return clusterQuery1(t, watch, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'DO %'") == "1"
	})
	if err := syscall.Kill(postmasterPID(t, dir), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.Done()

	c2 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	clusterQuery1(t, clusterConn(t, c2.AdminDSN("postgres")), "SELECT 1")
	// The orphan ran its query to the end before it noticed: the start
	// above had to wait for it.
	<-spun
	if spinErr != nil {
		t.Errorf("the orphaned backend's query: %v", spinErr)
	}
}

func TestSecondStartOnLiveDirFails(t *testing.T) {
	dir := clusterDir(t)
	c := startCluster(t, localproc.ClusterConfig{Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c2, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir})
	if err == nil {
		_ = c2.Stop(ctx)
		t.Fatal("second StartCluster on a live data directory succeeded")
	}
	if !errors.Is(err, localproc.ErrInUse) {
		t.Fatalf("got %v, want ErrInUse", err)
	}
	if got := readClusterFile(t, filepath.Join(dir, "port")); got != strconv.Itoa(int(c.Port())) {
		t.Errorf("failed start rewrote Dir/port to %s", got)
	}
	clusterQuery1(t, clusterConn(t, c.AdminDSN("postgres")), "SELECT 1") // the first one is unharmed
}

func TestRecordedPortTakenPicksAnother(t *testing.T) {
	dir := clusterDir(t)
	c1 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	if err := c1.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(c1.Port()))))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	c2 := startCluster(t, localproc.ClusterConfig{Dir: dir})
	if c2.Port() == c1.Port() {
		t.Fatalf("restart reused port %d, which is taken", c2.Port())
	}
	if got := readClusterFile(t, filepath.Join(dir, "port")); got != strconv.Itoa(int(c2.Port())) {
		t.Errorf("Dir/port = %s, want the new port %d", got, c2.Port())
	}
	clusterQuery1(t, clusterConn(t, c2.AdminDSN("postgres")), "SELECT 1")
}

// countingHandler counts log records whose message contains substr.
type countingHandler struct {
	slog.Handler
	substr string
	n      *atomic.Int32
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func TestPortRace(t *testing.T) {
	// Two clusters that both recorded port p start at once: both probes may
	// find p free, then one postgres loses the bind and must retry elsewhere.
	dirs := []string{clusterDir(t), clusterDir(t)}
	for _, dir := range dirs {
		c := startCluster(t, localproc.ClusterConfig{Dir: dir})
		if err := c.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	p := readClusterFile(t, filepath.Join(dirs[0], "port"))
	if err := os.WriteFile(filepath.Join(dirs[1], "port"), []byte(p+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var retries atomic.Int32
	log := slog.New(countingHandler{slog.DiscardHandler, "port taken", &retries})
	clusters := make([]*localproc.Cluster, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, dir := range dirs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			clusters[i], errs[i] = localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir, Log: log, Settings: map[string]string{"fsync": "off"}})
		})
	}
	wg.Wait()
	for i, c := range clusters {
		if errs[i] != nil {
			t.Fatalf("cluster %d: %v", i, errs[i])
		}
		t.Cleanup(func() { _ = c.Stop(context.Background()) })
		clusterQuery1(t, clusterConn(t, c.AdminDSN("postgres")), "SELECT 1")
	}
	if clusters[0].Port() == clusters[1].Port() {
		t.Fatalf("both clusters report port %d", clusters[0].Port())
	}
	if p != strconv.Itoa(int(clusters[0].Port())) && p != strconv.Itoa(int(clusters[1].Port())) {
		t.Errorf("neither cluster kept the recorded port %s", p)
	}
	t.Logf("lost bind races retried: %d", retries.Load())
}

func TestExplicitPort(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := ln.Addr().(*net.TCPAddr).Port
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := clusterDir(t)
	if c, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir, Port: taken}); err == nil {
		_ = c.Stop(ctx)
		t.Fatalf("started on port %d, which is taken", taken)
	} else if errors.Is(err, localproc.ErrNoPostgres) {
		t.Fatalf("port check should come first, got %v", err)
	}

	// Free it and ask again: an explicit port is used as is.
	_ = ln.Close()
	c := startCluster(t, localproc.ClusterConfig{Dir: dir, Port: taken})
	if int(c.Port()) != taken {
		t.Errorf("Port = %d, want %d", c.Port(), taken)
	}
}

func TestStartCanceled(t *testing.T) {
	dir := clusterDir(t)
	c := startCluster(t, localproc.ClusterConfig{Dir: dir}) // initdb, so the next start is postgres alone
	if err := c.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: dir}); !errors.Is(err, context.Canceled) {
		if err == nil {
			_ = c.Stop(context.Background())
		}
		t.Fatalf("got %v, want context.Canceled", err)
	}
	// Nothing was left running: the directory is free for the next start.
	clusterQuery1(t, clusterConn(t, startCluster(t, localproc.ClusterConfig{Dir: dir}).AdminDSN("postgres")), "SELECT 1")
}

func TestConcurrentClients(t *testing.T) {
	c := startCluster(t, localproc.ClusterConfig{Dir: clusterDir(t)})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, c.AdminDSN("postgres"))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			res, err := conn.Exec(ctx, fmt.Sprintf("SELECT %d", i)).ReadAll()
			if err != nil {
				t.Error(err)
				return
			}
			if got := string(res[0].Rows[0][0]); got != strconv.Itoa(i) {
				t.Errorf("got %s, want %d", got, i)
			}
		})
	}
	wg.Wait()
}

func TestStartClusterConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     localproc.ClusterConfig
		rootReq bool
		want    string // substring of the error
		is      error
	}{
		{name: "no dir", cfg: localproc.ClusterConfig{}, want: "Dir is required"},
		{name: "bad port", cfg: localproc.ClusterConfig{Port: 70000}, want: "out of range"},
		{name: "reserved setting", cfg: localproc.ClusterConfig{Settings: map[string]string{"Port": "1"}}, want: "managed by pgtenant"},
		{name: "bad setting name", cfg: localproc.ClusterConfig{Settings: map[string]string{"a=b": "1"}}, want: "invalid setting"},
		{name: "no binaries", cfg: localproc.ClusterConfig{BinDir: "/nonexistent"}, is: localproc.ErrNoPostgres},
		{name: "unknown os user", cfg: localproc.ClusterConfig{OSUser: "pgtenant-no-such-user"}, rootReq: true, want: "useradd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rootReq && os.Geteuid() != 0 {
				t.Skip("only applies when running as root")
			}
			if tt.cfg.Dir == "" && tt.name != "no dir" {
				tt.cfg.Dir = clusterDir(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := localproc.StartCluster(ctx, tt.cfg)
			if err == nil {
				_ = c.Stop(ctx)
				t.Fatal("StartCluster succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestUnreachableDirFallsBack: as root, a Dir under a 0700 parent (like a
// checkout under root's home, or t.TempDir) keeps its data under
// /var/lib/pgtenant/clusters, linked from Dir/pgdata, and a restart finds it.
func TestUnreachableDirFallsBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only applies when running as root")
	}
	dir := filepath.Join(t.TempDir(), "cluster") // t.TempDir is 0700 root
	link := filepath.Join(dir, "pgdata")
	t.Cleanup(func() {
		if target, err := filepath.EvalSymlinks(link); err == nil {
			_ = os.RemoveAll(target)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := localproc.ClusterConfig{Dir: dir, Settings: map[string]string{"fsync": "off"}}
	c, err := localproc.StartCluster(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	target, err := filepath.EvalSymlinks(link)
	if err != nil || !strings.HasPrefix(target, "/var/lib/pgtenant/clusters/") {
		t.Fatalf("pgdata = %q (%v), want a link into /var/lib/pgtenant/clusters", target, err)
	}
	port := c.Port()
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	c, err = localproc.StartCluster(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop(ctx)
	again, _ := filepath.EvalSymlinks(link)
	if again != target || c.Port() != port {
		t.Fatalf("restart: pgdata %s port %d, want %s %d", again, c.Port(), target, port)
	}
}

// ExampleStartCluster runs a development cluster whose data survives
// restarts, and stops it on the way out.
func ExampleStartCluster() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c, err := localproc.StartCluster(ctx, localproc.ClusterConfig{Dir: "/var/lib/pgtenant/dev"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Stop(context.Background()) // not ctx: it is done by then
	fmt.Println("postgres listening on", c.Host(), c.Port())
	select {
	case <-c.Done():
		fmt.Println(c.Err()) // crashed
	case <-ctx.Done(): // Ctrl-C
	}
}
