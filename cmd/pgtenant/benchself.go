package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/resolver"
)

// `pgtenant bench --self` runs the standard comparison with nothing set up
// beforehand. It starts, in a temporary directory:
//
//   - a throwaway Postgres (local.StartCluster: fsync off, max_connections
//     sized for the run, SCRAM logins over loopback only);
//   - when pgbouncer is installed, two PgBouncers in front of it, one in
//     session and one in transaction pool mode (bench.StartPgBouncer),
//     clients logging in with SCRAM-SHA-256 (auth_query with pass-through,
//     so roles created later log in too);
//   - two routers, each `pgtenant serve` in a child process of this one (the
//     same executable), so that their memory and threads are measured alone:
//     "router" reaches Postgres directly, "router-pgbouncer" reaches it
//     through the transaction-mode PgBouncer (upstream.dial_override). Both
//     share one catalog in the cluster, so they route a tenant to the same
//     database; their clients log in with SCRAM against a random app
//     secret, and they log in upstream as each tenant's own role.
//
// All targets do the same work against the same databases: tenant <id>'s
// database t_<id> is created first, through the router, and then the
// direct and PgBouncer targets log in to it as one shared role,
// pgtenant_bench (random password, SCRAM, granted CONNECT on every tenant
// database), since the tenants' own passwords are known only to the
// routers. Cold, which creates tenants, runs against the routers only.
//
// Everything is stopped and the directory removed when the run ends,
// including on Ctrl-C; the children also get a signal if this process dies.

// Labels of the --self targets, in the order they run; ratios are to direct.
const (
	selfDirect         = "direct"
	selfBouncerSession = "pgbouncer-session"
	selfBouncerTx      = "pgbouncer-transaction"
	selfRouter         = "router"
	selfRouterBouncer  = "router-pgbouncer"
)

const (
	// selfRole is the role the direct and PgBouncer targets log in as.
	selfRole = "pgtenant_bench"
	// selfReadyLine is what `pgtenant serve` prints once it listens.
	selfReadyLine = "pgtenant: routing tenants on "
	// selfStartTimeout bounds each router's start (template included).
	selfStartTimeout = 2 * time.Minute
	// selfStopTimeout bounds stopping each component at the end.
	selfStopTimeout = 30 * time.Second
	// selfCreateConcurrency caps tenants created at once before the run.
	selfCreateConcurrency = 8
)

// selfBench is the environment `pgtenant bench --self` runs in. close
// stops it; the zero value (or a half-started one) closes cleanly.
type selfBench struct {
	stderr   io.Writer
	dir      string
	cluster  *local.Cluster
	bouncers []*bench.PgBouncer
	routers  []*routerProc
	// targets are every target, direct first; routerTargets the ones that
	// can create tenants (Cold).
	targets, routerTargets []bench.Target
}

// startSelf starts the --self environment for cfg (whose Targets it
// ignores) and returns it with its targets. Progress notes go to stderr.
// On error everything it started is stopped again.
func startSelf(ctx context.Context, cfg bench.Config, stderr io.Writer) (_ *selfBench, err error) {
	// Check the flags before starting anything.
	probe := cfg
	probe.Targets = []bench.Target{{Label: selfRouter, DSN: "postgres://{tenant}@127.0.0.1/app"}}
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("--self runs the routers with this executable: %w", err)
	}
	// Children inherit the raised limit: PgBouncer and the routers hold a
	// descriptor per client and per server connection.
	_, _ = bench.RaiseFileLimit()

	s := &selfBench{stderr: stderr}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	// As root, postgres and pgbouncer run as the postgres OS user, who
	// must traverse the directory: /tmp then, not a TMPDIR that may be
	// under root's 0700 home.
	base := os.TempDir()
	if os.Geteuid() == 0 {
		base = "/tmp"
	}
	if s.dir, err = os.MkdirTemp(base, "pgtenant-bench-self-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(s.dir, 0o711); err != nil {
		return nil, err
	}

	maxConns := selfMaxConnections(cfg)
	s.notef("starting Postgres (max_connections %d, fsync off) in %s", maxConns, s.dir)
	s.cluster, err = local.StartCluster(ctx, local.ClusterConfig{
		Dir: filepath.Join(s.dir, "postgres"),
		Settings: map[string]string{
			"fsync":              "off",
			"synchronous_commit": "off",
			"full_page_writes":   "off",
			"max_connections":    strconv.Itoa(maxConns),
		},
	})
	if err != nil {
		return nil, err
	}
	admin, err := pgx.Connect(ctx, s.cluster.AdminDSN("postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect to the bench cluster: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	rolePassword := randomHex(16)
	// password_encryption is scram-sha-256: the server stores a verifier.
	if _, err := admin.Exec(ctx, "CREATE ROLE "+selfRole+" LOGIN PASSWORD '"+rolePassword+"'"); err != nil {
		return nil, fmt.Errorf("create role %s: %w", selfRole, err)
	}

	var session, tx *bench.PgBouncer
	if bin, ok := bench.HavePgBouncer(); ok {
		if session, err = s.startBouncer(ctx, cfg, bench.PoolSession); err != nil {
			return nil, err
		}
		if tx, err = s.startBouncer(ctx, cfg, bench.PoolTransaction); err != nil {
			return nil, err
		}
		s.notef("PgBouncer (%s): session pooling on %s, transaction pooling on %s", bin, session.Addr(), tx.Addr())
	} else {
		s.notef("pgbouncer is not installed (%s, or on PATH): skipping %s, %s and %s; install it with `apt-get install pgbouncer` (or make deps)",
			bench.DefaultPgBouncer, selfBouncerSession, selfBouncerTx, selfRouterBouncer)
	}

	secret, key := randomHex(16), resolver.NewKey()
	env := selfRouterEnv(secret, s.cluster.AdminDSN("postgres"), key)
	router, err := s.startRouter(ctx, exe, selfRouter, selfRouterConfig(cfg, nil), env)
	if err != nil {
		return nil, err
	}
	var routerBouncer *routerProc
	if tx != nil {
		if routerBouncer, err = s.startRouter(ctx, exe, selfRouterBouncer, selfRouterConfig(cfg, tx), env); err != nil {
			return nil, err
		}
		s.notef("routers (pgtenant serve): %s on %s (pid %d), %s on %s (pid %d, upstream through PgBouncer %s)",
			selfRouter, router.addr, router.pid(), selfRouterBouncer, routerBouncer.addr, routerBouncer.pid(), tx.Addr())
	} else {
		s.notef("router (pgtenant serve) on %s (pid %d)", router.addr, router.pid())
	}

	routerDSN := func(addr string) string {
		return "postgres://" + bench.TenantPlaceholder + ":" + secret + "@" + addr + "/app?sslmode=disable"
	}
	if err := s.createTenants(ctx, cfg, routerDSN(router.addr), admin); err != nil {
		return nil, err
	}

	tenantDSN := func(port uint16) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s%s?sslmode=disable", selfRole, rolePassword, port, local.DefaultPrefix, bench.TenantPlaceholder)
	}
	s.targets = append(s.targets, bench.Target{Label: selfDirect, DSN: tenantDSN(s.cluster.Port())})
	if session != nil {
		s.targets = append(s.targets,
			bench.Target{Label: selfBouncerSession, DSN: tenantDSN(session.Port()), PID: session.PID()},
			bench.Target{Label: selfBouncerTx, DSN: tenantDSN(tx.Port()), PID: tx.PID()})
	}
	s.routerTargets = append(s.routerTargets, bench.Target{Label: selfRouter, DSN: routerDSN(router.addr), PID: router.pid()})
	if routerBouncer != nil {
		s.routerTargets = append(s.routerTargets, bench.Target{Label: selfRouterBouncer, DSN: routerDSN(routerBouncer.addr), PID: routerBouncer.pid()})
	}
	s.targets = append(s.targets, s.routerTargets...)
	return s, nil
}

// selfMaxConnections sizes the cluster for cfg: C = tenants x conns
// connections of the target being driven, C more for backends of a storm
// still exiting, C server connections the session PgBouncer keeps after its
// rounds, up to C for each of the two transaction-mode pools (its own
// target's role and the tenants' roles, from router-pgbouncer), one
// auth_query connection per database and PgBouncer, Cold's new tenants
// (their databases and pools), and the routers' catalog and admin pools.
func selfMaxConnections(cfg bench.Config) int {
	tenants, conns := max(cfg.Tenants, 1), max(cfg.ConnsPerTenant, 1)
	c := tenants * conns
	n := 0
	for _, sc := range cfg.Scenarios {
		if sc == bench.Cold {
			n = cfg.NewTenants
			if n == 0 {
				n = tenants
			}
		}
	}
	return 5*c + 2*tenants + 3*n + 64
}

// startBouncer starts one PgBouncer in front of the cluster.
func (s *selfBench) startBouncer(ctx context.Context, cfg bench.Config, mode string) (*bench.PgBouncer, error) {
	conns := max(cfg.ConnsPerTenant, 1)
	b, err := bench.StartPgBouncer(ctx, bench.PgBouncerConfig{
		Dir:          s.dir,
		Name:         "pgbouncer-" + mode,
		ServerPort:   s.cluster.Port(),
		AuthUser:     s.cluster.AdminUser(),
		AuthPassword: s.cluster.AdminPassword(),
		PoolMode:     mode,
		// Two targets' clients at once at most (a storm's closing ones
		// and the next round's), and as many server connections per
		// tenant as there are clients per tenant, so that no client
		// queues in session mode.
		MaxClientConn:   2*max(cfg.Tenants, 1)*conns + 100,
		DefaultPoolSize: conns,
	})
	if err != nil {
		return nil, err
	}
	s.bouncers = append(s.bouncers, b)
	return b, nil
}

// selfRouterConfig is the router's configuration file. Secrets are not in
// it but in the environment (selfRouterEnv). via, when set, is the
// PgBouncer the router reaches Postgres through.
func selfRouterConfig(cfg bench.Config, via *bench.PgBouncer) string {
	c := max(cfg.Tenants, 1) * max(cfg.ConnsPerTenant, 1)
	var b strings.Builder
	b.WriteString("# Written by pgtenant bench --self. Secrets come from the environment.\n")
	b.WriteString("listen: 127.0.0.1:0\n")
	b.WriteString("drain_timeout: 0s\n")
	b.WriteString("log:\n  level: warn\n")
	// The handshake cap protects a router from floods; here it must not
	// refuse the benchmark's own storm.
	fmt.Fprintf(&b, "limits:\n  max_handshakes: %d\n", max(1000, 2*c))
	if via != nil {
		fmt.Fprintf(&b, "upstream:\n  dial_override: %s\n", via.Addr())
		// PgBouncer refuses startup parameters it does not track.
		fmt.Fprintf(&b, "  forward_params: [%s]\n", strings.Join(neonPoolerParams, ", "))
	}
	return b.String()
}

// selfRouterEnv is the routers' environment: ours without any pgtenant
// secret or systemd variable, plus the secrets of this run.
func selfRouterEnv(secret, adminDSN, key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case envPassword, envAdminDSN, envCatalogDSN, envCatalogKey, envNeonAPIKey, envAdminToken,
			"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			continue
		}
		env = append(env, kv)
	}
	return append(env, envPassword+"="+secret, envAdminDSN+"="+adminDSN, envCatalogKey+"="+key)
}

// startRouter writes name's configuration and starts `pgtenant serve` on it.
func (s *selfBench) startRouter(ctx context.Context, exe, name, config string, env []string) (*routerProc, error) {
	path := filepath.Join(s.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	r, err := startRouterProc(ctx, exe, path, filepath.Join(s.dir, name+".log"), env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s.routers = append(s.routers, r)
	return r, nil
}

// createTenants connects once to each tenant through the router, which
// creates its database, then lets selfRole connect to every one.
func (s *selfBench) createTenants(ctx context.Context, cfg bench.Config, routerDSN string, admin *pgx.Conn) error {
	n := max(cfg.Tenants, 1)
	prefix := cfg.TenantPrefix
	if prefix == "" {
		prefix = "bench_"
	}
	t0 := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(selfCreateConcurrency)
	for i := range n {
		tenant := prefix + strconv.Itoa(i)
		g.Go(func() error {
			cctx, cancel := context.WithTimeout(gctx, selfStartTimeout)
			defer cancel()
			c, err := pgconn.Connect(cctx, strings.ReplaceAll(routerDSN, bench.TenantPlaceholder, tenant))
			if err != nil {
				return fmt.Errorf("create tenant %s through the router: %w", tenant, err)
			}
			return c.Close(cctx)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := range n {
		db := pgx.Identifier{local.DefaultPrefix + prefix + strconv.Itoa(i)}.Sanitize()
		if _, err := admin.Exec(ctx, "GRANT CONNECT ON DATABASE "+db+" TO "+selfRole); err != nil {
			return fmt.Errorf("grant %s access to %s: %w", selfRole, db, err)
		}
	}
	s.notef("created %d tenants through the router in %v (databases %s%s0 ...); %s may connect to each",
		n, time.Since(t0).Round(time.Millisecond), local.DefaultPrefix, prefix, selfRole)
	return nil
}

// run runs cfg against the --self targets. Cold creates tenants, which
// only the routers do, so each run of consecutive Cold scenarios goes to
// the routers alone (the router as baseline) and the rest to every target;
// the reports are joined in scenario order.
func (s *selfBench) run(ctx context.Context, cfg bench.Config) (*bench.Report, error) {
	var rep *bench.Report
	for _, seg := range coldApart(cfg.Scenarios) {
		c := cfg
		c.Scenarios, c.Targets = seg, s.targets
		if seg[0] == bench.Cold {
			c.Targets = s.routerTargets
			s.notef("cold runs against the routers only: Postgres and PgBouncer do not create databases")
		}
		r, err := bench.Run(ctx, c)
		switch {
		case r == nil:
			if rep != nil && ctx.Err() != nil {
				rep.Partial = true
				return rep, err
			}
			return nil, err
		case rep == nil:
			rep = r
		default:
			rep.Scenarios = append(rep.Scenarios, r.Scenarios...)
			rep.Partial = rep.Partial || r.Partial
		}
		if err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// coldApart splits scenarios into runs of consecutive ones that are all
// Cold or all not, in order.
func coldApart(scs []bench.Scenario) [][]bench.Scenario {
	var segs [][]bench.Scenario
	for i, sc := range scs {
		if i == 0 || (sc == bench.Cold) != (scs[i-1] == bench.Cold) {
			segs = append(segs, nil)
		}
		segs[len(segs)-1] = append(segs[len(segs)-1], sc)
	}
	return segs
}

// close stops the routers, then PgBouncer, then Postgres, and removes the
// directory. Problems are reported on stderr: the run's outcome stands.
func (s *selfBench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), selfStopTimeout)
	defer cancel()
	for _, r := range s.routers {
		if err := r.stop(ctx); err != nil {
			s.notef("warning: stopping a router: %v", err)
		}
	}
	for _, b := range s.bouncers {
		if err := b.Stop(ctx); err != nil {
			s.notef("warning: stopping %v: %v", b, err)
		}
	}
	if s.cluster != nil {
		if err := s.cluster.Stop(ctx); err != nil {
			s.notef("warning: stopping Postgres: %v", err)
		}
	}
	if s.dir != "" {
		if err := os.RemoveAll(s.dir); err != nil {
			s.notef("warning: %v", err)
		}
	}
}

func (s *selfBench) notef(format string, args ...any) {
	fmt.Fprintf(s.stderr, "pgtenant bench --self: "+format+"\n", args...)
}

// routerProc is a router running as `pgtenant serve` in a child process.
type routerProc struct {
	cmd     *exec.Cmd
	addr    string
	logPath string

	done    chan struct{} // closed by wait once the child is reaped
	exitErr error         // written by wait before done is closed
}

// startRouterProc starts `exe serve --config config` and returns once it
// listens (it prints its address). The child runs in a process group of
// its own, so that a terminal's Ctrl-C reaches only this process, which then
// stops it; it gets SIGTERM if this process dies. Its log goes to logPath.
func startRouterProc(ctx context.Context, exe, config, logPath string, env []string) (*routerProc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	ready := &readyWriter{addr: make(chan string, 1)}
	cmd := exec.Command(exe, "serve", "--config", config)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = ready, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgtenant serve: %w", err)
	}
	r := &routerProc{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go r.wait()
	t := time.NewTimer(selfStartTimeout)
	defer t.Stop()
	select {
	case r.addr = <-ready.addr:
		return r, nil
	case <-r.done:
		return nil, fmt.Errorf("pgtenant serve exited during start-up: %w%s", r.exitErr, fileTail(logPath))
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = errors.New("pgtenant serve did not start listening in time")
	}
	r.kill()
	return nil, fmt.Errorf("%w%s", err, fileTail(logPath))
}

func (r *routerProc) wait() {
	r.exitErr = r.cmd.Wait()
	close(r.done)
}

func (r *routerProc) pid() int { return r.cmd.Process.Pid }

// stop asks the router to shut down (SIGTERM, as a service manager would)
// and waits for it, killing it when ctx ends first.
func (r *routerProc) stop(ctx context.Context) error {
	select {
	case <-r.done:
		return r.exitStatus()
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return r.exitStatus()
	case <-ctx.Done():
	}
	r.kill()
	return fmt.Errorf("router (pid %d) did not exit on SIGTERM: killed it%s", r.pid(), fileTail(r.logPath))
}

func (r *routerProc) exitStatus() error {
	if r.exitErr != nil {
		return fmt.Errorf("router (pid %d): %w%s", r.pid(), r.exitErr, fileTail(r.logPath))
	}
	return nil
}

func (r *routerProc) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// readyWriter is a router's standard output: it passes on the address of
// the first "pgtenant: routing tenants on ADDR" line and drops the rest.
// exec writes to it from one goroutine.
type readyWriter struct {
	mu   sync.Mutex
	line []byte
	sent bool
	addr chan string // buffered, one value
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range p {
		if c != '\n' {
			if len(w.line) < 4096 {
				w.line = append(w.line, c)
			}
			continue
		}
		if a, ok := strings.CutPrefix(string(w.line), selfReadyLine); ok && !w.sent {
			w.sent = true
			w.addr <- strings.TrimSpace(a)
		}
		w.line = w.line[:0]
	}
	return len(p), nil
}

// fileTail returns the last lines of a log file, to append to an error.
func fileTail(path string) string {
	const maxBytes = 4 << 10
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	from := max(0, fi.Size()-maxBytes)
	b, _ := io.ReadAll(io.NewSectionReader(f, from, fi.Size()-from))
	if len(strings.TrimSpace(string(b))) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return fmt.Sprintf("\n%s (last lines):\n\t%s", path, strings.Join(lines, "\n\t"))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}
