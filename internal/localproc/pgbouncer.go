package localproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/logtail"
)

// PgBouncer as a baseline: StartPgBouncer runs the distribution's pgbouncer
// binary in front of a Postgres server, so that a router can be compared
// with the pooler people already use, in the same run (`pgtenant bench
// --self`, internal/testbed). It is a fixture for benchmarks, not a way to
// deploy PgBouncer: the process lives as long as this one at most, and
// everything it needs is written to one directory. Error texts keep the
// "bench:" prefix they had when this lived in package bench.

// ErrNoPgBouncer is returned by StartPgBouncer when no pgbouncer binary can
// be found, so callers can tell "not installed" (skip the targets) from a
// failure.
var ErrNoPgBouncer = errors.New("bench: pgbouncer not found (Debian/Ubuntu: apt-get install pgbouncer)")

// DefaultPgBouncer is where Debian's and Ubuntu's pgbouncer package installs
// the binary.
const DefaultPgBouncer = "/usr/sbin/pgbouncer"

// Pool modes of PgBouncerConfig.PoolMode.
const (
	PoolSession     = "session"
	PoolTransaction = "transaction"
	PoolStatement   = "statement"
)

const (
	// PgBouncer's random ports come from randomPort, like the clusters'; a
	// port taken between the probe and pgbouncer's bind is retried with
	// another, up to portAttempts times.
	bouncerReadyTimeout = 15 * time.Second
	bouncerReadyPoll    = 20 * time.Millisecond
	// bouncerStopGrace is how long pgbouncer gets to exit after SIGTERM
	// (an immediate shutdown) before SIGKILL.
	bouncerStopGrace = 5 * time.Second
)

// PgBouncerConfig describes a PgBouncer in front of one Postgres server. Dir,
// ServerPort, AuthUser and AuthPassword are required; the zero value of
// every other field picks a default.
//
// Clients log in with SCRAM-SHA-256 as any role of the server, including
// roles created after the start: PgBouncer fetches the role's SCRAM verifier
// with its default auth_query (pg_shadow), logged in as AuthUser, checks
// the client against it, and logs in to the server as that role with the
// same proof (SCRAM pass-through). Every database name is routed to the
// server (a "*" entry), each (database, role) pair getting its own pool.
type PgBouncerConfig struct {
	// Binary is the pgbouncer executable. Empty means DefaultPgBouncer if
	// it exists, else "pgbouncer" on PATH.
	Binary string
	// Dir is an existing directory for <Name>.ini, <Name>.users (AuthUser's
	// password, mode 0600) and <Name>.log (pgbouncer's own log). When this
	// process runs as root, pgbouncer runs as OSUser, who must be able to
	// traverse Dir (root's home often is not: use a directory under /tmp).
	Dir string
	// Name tells several instances in one Dir apart; empty means
	// "pgbouncer".
	Name string
	// ServerHost and ServerPort locate the Postgres server. Empty host
	// means 127.0.0.1. Server connections are plaintext.
	ServerHost string
	ServerPort uint16
	// AuthUser and AuthPassword log in to the server to look up roles;
	// AuthUser must be able to read pg_shadow (a superuser), and it is
	// also the one role whose password is kept in the auth file. The
	// password is a secret: it never appears in errors.
	AuthUser, AuthPassword string
	// PoolMode is PoolSession, PoolTransaction or PoolStatement; empty
	// means PoolSession.
	PoolMode string
	// Port is the port to listen on at 127.0.0.1. Zero picks a random free
	// port in [15000, 32767].
	Port int
	// MaxClientConn caps client connections; zero means 100 (PgBouncer's
	// default).
	MaxClientConn int
	// DefaultPoolSize is the most server connections per (database, role)
	// pool; zero means 20 (PgBouncer's default). In session mode every
	// client holds one for its whole session, so clients beyond it wait.
	DefaultPoolSize int
	// OSUser is the OS user pgbouncer runs as when this process runs as
	// root (pgbouncer refuses to run as root). Empty means "postgres".
	OSUser string
}

func (c *PgBouncerConfig) name() string {
	if c.Name == "" {
		return "pgbouncer"
	}
	return c.Name
}

func (c *PgBouncerConfig) serverHost() string {
	if c.ServerHost == "" {
		return "127.0.0.1"
	}
	return c.ServerHost
}

func (c *PgBouncerConfig) poolMode() string {
	if c.PoolMode == "" {
		return PoolSession
	}
	return c.PoolMode
}

func (c *PgBouncerConfig) osUser() string {
	if c.OSUser == "" {
		return "postgres"
	}
	return c.OSUser
}

// Validate reports what is wrong with c, all problems at once.
func (c *PgBouncerConfig) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("Dir is required"))
	}
	if c.ServerPort == 0 {
		errs = append(errs, errors.New("ServerPort is required"))
	}
	if c.AuthUser == "" || c.AuthPassword == "" {
		errs = append(errs, errors.New("AuthUser and AuthPassword are required"))
	}
	switch c.poolMode() {
	case PoolSession, PoolTransaction, PoolStatement:
	default:
		errs = append(errs, fmt.Errorf("PoolMode %q is not session, transaction or statement", c.PoolMode))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("Port %d is out of range", c.Port))
	}
	if c.MaxClientConn < 0 || c.DefaultPoolSize < 0 {
		errs = append(errs, errors.New("MaxClientConn and DefaultPoolSize must not be negative"))
	}
	// The ini file has no quoting: a value must fit on its line.
	for _, f := range [][2]string{{"Dir", c.Dir}, {"Name", c.Name}, {"ServerHost", c.ServerHost}, {"AuthUser", c.AuthUser}} {
		if strings.ContainsAny(f[1], "\n\r;= ") {
			errs = append(errs, fmt.Errorf("%s %q: spaces, '=', ';' and line breaks are not supported", f[0], f[1]))
		}
	}
	if strings.ContainsAny(c.AuthPassword, "\n\r") {
		errs = append(errs, errors.New("AuthPassword: line breaks are not supported"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: pgbouncer: %w", err)
	}
	return nil
}

// PgBouncer is a running pgbouncer process started by StartPgBouncer. Its
// methods are safe for concurrent use.
type PgBouncer struct {
	cfg     PgBouncerConfig
	port    uint16
	cmd     *exec.Cmd
	logPath string

	done    chan struct{} // closed by wait once the process is reaped
	exitErr error         // written by wait before done is closed
}

// StartPgBouncer writes the configuration into cfg.Dir, starts pgbouncer
// and returns once it accepts connections. ctx bounds the start-up only:
// pgbouncer keeps running until Stop, until it dies, or until this process
// exits (it gets SIGTERM when its parent dies). It runs in a process group
// of its own, so a terminal's Ctrl-C reaches only this process, which then
// stops it. On error nothing is left running.
func StartPgBouncer(ctx context.Context, cfg PgBouncerConfig) (*PgBouncer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bin, err := findPgBouncer(cfg.Binary)
	if err != nil {
		return nil, err
	}
	ra, err := lookupRunAs(cfg.osUser(), "pgbouncer", "PgBouncerConfig")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	name := cfg.name()
	users := filepath.Join(cfg.Dir, name+".users")
	if err := ra.writeFile(users, []byte(authFileLine(cfg.AuthUser, cfg.AuthPassword))); err != nil {
		return nil, fmt.Errorf("bench: pgbouncer: %w", err)
	}
	port, explicit := uint16(cfg.Port), cfg.Port != 0
	for attempt := 1; ; attempt++ {
		if !explicit {
			if port, err = randomPort(); err != nil {
				return nil, err
			}
		}
		b, err := startBouncer(ctx, cfg, bin, port, users, ra)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, errBouncerPortTaken) || explicit || attempt == portAttempts {
			return nil, err
		}
	}
}

// errBouncerPortTaken marks a start that failed because another process
// bound the port first.
var errBouncerPortTaken = errors.New("bench: pgbouncer: port already in use")

func startBouncer(ctx context.Context, cfg PgBouncerConfig, bin string, port uint16, users string, ra *runAs) (*PgBouncer, error) {
	name := cfg.name()
	ini := filepath.Join(cfg.Dir, name+".ini")
	if err := ra.writeFile(ini, []byte(bouncerINI(cfg, port, users))); err != nil {
		return nil, fmt.Errorf("bench: pgbouncer: %w", err)
	}
	logPath := filepath.Join(cfg.Dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("bench: pgbouncer: %w", err)
	}
	defer logf.Close() // the child has its own copy
	// Not daemonised and without a logfile setting, pgbouncer logs to
	// stderr, which is the log file we opened (the OS user needs no
	// write permission in Dir).
	cmd := exec.Command(bin, ini)
	cmd.Dir = cfg.Dir
	cmd.Env = bouncerEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = ra.sysProcAttr(syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start pgbouncer: %w", err)
	}
	b := &PgBouncer{cfg: cfg, port: port, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go b.wait()
	if err := b.waitReady(ctx); err != nil {
		_ = b.kill()
		return nil, err
	}
	return b, nil
}

// waitReady polls until pgbouncer accepts TCP connections, failing once it
// exits, when ctx ends or after bouncerReadyTimeout.
func (b *PgBouncer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, bouncerReadyTimeout)
	defer cancel()
	tick := time.NewTicker(bouncerReadyPoll)
	defer tick.Stop()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", b.Addr())
		if err == nil {
			_ = c.Close()
			select {
			case <-b.done: // someone else's listener; ours failed to bind
			default:
				return nil
			}
		}
		select {
		case <-b.done:
			tail := logtail.Since(b.logPath, 0)
			if strings.Contains(tail, "Address already in use") {
				return fmt.Errorf("%w: %d", errBouncerPortTaken, b.port)
			}
			return fmt.Errorf("bench: pgbouncer exited during start-up: %w%s", b.exitErr, tail)
		case <-ctx.Done():
			return fmt.Errorf("bench: waiting for pgbouncer on %s: %w%s", b.Addr(), ctx.Err(), logtail.Since(b.logPath, 0))
		case <-tick.C:
		}
	}
}

// wait reaps the process; every PgBouncer runs exactly one.
func (b *PgBouncer) wait() {
	b.exitErr = b.cmd.Wait()
	close(b.done)
}

// Addr returns the address pgbouncer listens on, "127.0.0.1:<port>".
func (b *PgBouncer) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(b.port)))
}

// Port returns the TCP port pgbouncer listens on.
func (b *PgBouncer) Port() uint16 { return b.port }

// PID returns pgbouncer's process ID (one process serves every client), for
// Target.PID.
func (b *PgBouncer) PID() int { return b.cmd.Process.Pid }

// PoolMode returns the pool mode it runs in.
func (b *PgBouncer) PoolMode() string { return b.cfg.poolMode() }

// LogPath returns the path of pgbouncer's log.
func (b *PgBouncer) LogPath() string { return b.logPath }

// Done returns a channel closed once the process has exited.
func (b *PgBouncer) Done() <-chan struct{} { return b.done }

// String describes the instance (no secrets), so a PgBouncer is safe to
// log or print with %v.
func (b *PgBouncer) String() string {
	return fmt.Sprintf("pgbouncer %s (%s pooling, pid %d)", b.Addr(), b.cfg.poolMode(), b.PID())
}

// Stop shuts pgbouncer down at once (SIGTERM: PgBouncer's immediate
// shutdown, which closes every client and server connection) and waits for
// it to exit, sending SIGKILL if it takes longer than 5s or ctx ends first.
// It is idempotent and returns nil once the process is gone, whether this
// call stopped it or it had exited on its own before (see Done).
func (b *PgBouncer) Stop(ctx context.Context) error {
	select {
	case <-b.done:
		return nil
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(bouncerStopGrace)
	defer t.Stop()
	select {
	case <-b.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = b.kill()
	return fmt.Errorf("bench: pgbouncer (pid %d) did not exit on SIGTERM; killed it", b.PID())
}

// kill sends SIGKILL and waits for the process to be reaped.
func (b *PgBouncer) kill() error {
	_ = b.cmd.Process.Kill()
	<-b.done
	return b.exitErr
}

// findPgBouncer returns the binary to run.
func findPgBouncer(bin string) (string, error) {
	if bin != "" {
		p, err := exec.LookPath(bin)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrNoPgBouncer, err)
		}
		return p, nil
	}
	if fi, err := os.Stat(DefaultPgBouncer); err == nil && !fi.IsDir() {
		return DefaultPgBouncer, nil
	}
	p, err := exec.LookPath("pgbouncer")
	if err != nil {
		return "", ErrNoPgBouncer
	}
	return p, nil
}

// HavePgBouncer reports whether StartPgBouncer with an empty Binary finds a
// pgbouncer to run, and which.
func HavePgBouncer() (path string, ok bool) {
	p, err := findPgBouncer("")
	return p, err == nil
}

// bouncerINI is pgbouncer.ini for cfg listening on port.
func bouncerINI(cfg PgBouncerConfig, port uint16, users string) string {
	maxClients, poolSize := cfg.MaxClientConn, cfg.DefaultPoolSize
	if maxClients == 0 {
		maxClients = 100
	}
	if poolSize == 0 {
		poolSize = 20
	}
	var b strings.Builder
	fmt.Fprintf(&b, "; Written by pgtenant bench: a throwaway PgBouncer for a benchmark.\n")
	fmt.Fprintf(&b, "[databases]\n")
	fmt.Fprintf(&b, "* = host=%s port=%d\n", cfg.serverHost(), cfg.ServerPort)
	fmt.Fprintf(&b, "\n[pgbouncer]\n")
	for _, kv := range [][2]string{
		{"listen_addr", "127.0.0.1"},
		{"listen_port", strconv.Itoa(int(port))},
		{"unix_socket_dir", ""}, // no socket: no directory permissions to get wrong
		{"auth_type", "scram-sha-256"},
		{"auth_file", users},
		{"auth_user", cfg.AuthUser},
		{"pool_mode", cfg.poolMode()},
		{"max_client_conn", strconv.Itoa(maxClients)},
		{"default_pool_size", strconv.Itoa(poolSize)},
		{"server_tls_sslmode", "disable"},
		{"client_tls_sslmode", "disable"},
		// pgjdbc sends it; PgBouncer refuses parameters it does not track.
		{"ignore_startup_parameters", "extra_float_digits"},
		// One line per connection would cost more than a storm measures.
		{"log_connections", "0"},
		{"log_disconnections", "0"},
		{"log_stats", "0"},
	} {
		fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
	}
	return b.String()
}

// authFileLine is one line of PgBouncer's auth_file: both fields in double
// quotes, a double quote inside doubled.
func authFileLine(user, password string) string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	return q(user) + " " + q(password) + "\n"
}

// bouncerEnv is pgbouncer's environment: ours without systemd's
// notification and socket-activation variables, which would make it talk
// to (or take sockets from) the service manager of the process running the
// benchmark.
func bouncerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			continue
		}
		env = append(env, kv)
	}
	return env
}
