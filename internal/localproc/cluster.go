package localproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/logtail"
)

// Local cluster management.
//
// A Cluster is a postmaster started from the installed server binaries and
// owned by this process: `pgtenant dev` keeps one in a long-lived directory,
// tests (internal/pgtest) start throwaway ones. The layout of
// ClusterConfig.Dir is:
//
//	Dir/pgdata          PGDATA, owned by the OS user postgres runs as, mode 0700
//	Dir/admin.password  the superuser's password, 0600, owned by us
//	Dir/port            the TCP port, reused on restart because tenants'
//	                    routes are stored with host:port
//	Dir/postgres.log    initdb and postgres stdout/stderr
//
// Listening addresses, port, sockets and password encryption are passed as
// `postgres -c` flags on every start instead of being written to
// postgresql.conf, so a restart with a different ClusterConfig never has to
// edit (or fight with) the cluster's own configuration files. The server only
// listens on 127.0.0.1 and pg_hba.conf only admits SCRAM logins from loopback.
//
// The code is Linux-only: it relies on SysProcAttr.Pdeathsig. Linux sends
// that signal when the OS thread that forked the child exits, not only when
// the process does; the Go runtime only retires a thread when a goroutine
// exits while locked to it (runtime.LockOSThread without Unlock), which
// pgtenant never does.

// ErrNoPostgres is returned by StartCluster when no initdb/postgres binaries
// can be found. Tests use it to tell "not installed" (skip) from a broken
// installation (fail).
var ErrNoPostgres = errors.New("local: postgres server binaries not found")

// ErrInUse is returned by StartCluster when a live postmaster already owns
// the data directory, for example a second `pgtenant dev` on the same Dir.
var ErrInUse = errors.New("local: data directory is in use by another postmaster")

const (
	adminUser = "postgres"
	localhost = "127.0.0.1"

	// Random ports come from below the Linux ephemeral range (32768-60999) so
	// that outgoing connections can never be holding the port we pick.
	minRandomPort = 15000
	maxRandomPort = 32767

	// portAttempts bounds the retries when another process binds our
	// randomly picked port between the probe and postgres' own bind.
	portAttempts = 8

	readyPoll = 25 * time.Millisecond
	// haltGrace is how long an immediate shutdown (SIGQUIT) may take before
	// the whole process group gets SIGKILL.
	haltGrace = 5 * time.Second
	// maxLogSize: postgres.log is moved to postgres.log.1 at start when it
	// is larger, so a long-lived dev cluster doesn't fill the disk.
	maxLogSize = 64 << 20
)

// ClusterConfig describes a local Postgres cluster managed by pgtenant. Only
// Dir is required; the zero value of every other field picks a default.
type ClusterConfig struct {
	// Dir is the pgtenant-owned directory holding the cluster (see the
	// layout above). It is created if missing. When running as root, Dir
	// and all its parents must be traversable by OSUser; Dir itself is made
	// so (chmod go+x) if we own it.
	Dir string

	// Port is the TCP port to listen on at 127.0.0.1. Zero reuses the port
	// recorded in Dir/port if it is free, else picks a random free port in
	// [15000, 32767]. Either way the port used is recorded in Dir/port.
	// A non-zero Port that is taken is an error.
	Port int

	// OSUser is the OS user initdb and postgres run as when this process
	// runs as root (they refuse to run as root). Zero means "postgres".
	// Ignored when not running as root.
	OSUser string

	// BinDir is the directory holding initdb and postgres. Zero means the
	// binaries matching an existing data directory's PG_VERSION, else the
	// newest /usr/lib/postgresql/*/bin (or /usr/pgsql-*/bin), else PATH.
	BinDir string

	// Settings are extra server settings passed as `postgres -c key=value`
	// on every start (e.g. fsync=off for tests, max_connections). Keys
	// pgtenant manages itself (port, listen_addresses, ...) are rejected.
	// fsync=off also makes initdb skip its fsync (--no-sync).
	Settings map[string]string

	// Log receives progress messages. Nil discards them.
	Log *slog.Logger
}

func (cfg *ClusterConfig) osUser() string {
	if cfg.OSUser == "" {
		return "postgres"
	}
	return cfg.OSUser
}

func (cfg *ClusterConfig) logger() *slog.Logger {
	if cfg.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return cfg.Log
}

// reservedSettings are set by StartCluster itself: overriding them would
// break Host/Port/AdminDSN or the "SCRAM over loopback only" guarantee.
var reservedSettings = []string{
	"port", "listen_addresses", "unix_socket_directories", "password_encryption",
	"data_directory", "config_file", "hba_file", "ident_file",
}

// Cluster is a running postmaster started by StartCluster. Its methods are
// safe for concurrent use; the server accepts as many concurrent connections
// as max_connections allows.
type Cluster struct {
	dir      string
	port     uint16
	password string

	cmd     *exec.Cmd
	logPath string
	logFrom int64 // size of postgres.log before this postmaster started
	// movedFrom is the port recorded by the previous start, when this one
	// had to take another (see MovedFrom).
	movedFrom uint16

	ready    atomic.Bool   // set once the postmaster accepted a login
	stopping atomic.Bool   // set before we signal the postmaster
	done     chan struct{} // closed by waitPostmaster
	exitErr  error         // written by waitPostmaster before done is closed
}

// StartCluster initialises Dir/pgdata if it is empty (initdb) and starts
// postgres, returning once it accepts connections. ctx bounds the start-up
// only: the server keeps running until Stop, until it dies, or until this
// process exits (postgres gets SIGINT when its parent dies). On error nothing
// is left running.
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	log := cfg.logger()
	if cfg.Dir == "" {
		return nil, errors.New("local: ClusterConfig.Dir is required")
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("local: ClusterConfig.Port %d out of range", cfg.Port)
	}
	settings, err := settingArgs(cfg.Settings)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	pgdata := filepath.Join(dir, "pgdata")
	// Binaries first: on a machine without Postgres, ErrNoPostgres (which
	// tests skip on) must win over a missing OS user.
	binDir, err := findBinDir(cfg.BinDir, peekVersion(pgdata))
	if err != nil {
		return nil, err
	}
	runAs, err := lookupRunAs(cfg.osUser(), "postgres", "ClusterConfig")
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	if runAs != nil {
		if pgdata, err = reachablePGData(dir, runAs, log); err != nil {
			return nil, err
		}
	}
	if err := prepareDirs(dir, pgdata, runAs, log); err != nil {
		return nil, err
	}
	version, err := dataVersion(pgdata)
	if err != nil {
		return nil, err
	}
	password, err := adminPassword(dir, version != "")
	if err != nil {
		return nil, err
	}
	// Before initdb: a taken explicit port should fail fast.
	port, recorded, explicit, err := firstPort(dir, cfg.Port, log)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	if err := rotateLog(logPath); err != nil {
		return nil, err
	}
	if version == "" {
		t0 := time.Now()
		log.Info("initialising postgres cluster", "pgdata", pgdata, "bin", binDir)
		if err := initdb(ctx, binDir, dir, pgdata, logPath, password, runAs, cfg.Settings["fsync"] == "off"); err != nil {
			return nil, err
		}
		log.Info("initialised postgres cluster", "pgdata", pgdata, "took", time.Since(t0))
	}

	for attempt := 1; ; attempt++ {
		c, err := startPostmaster(ctx, binDir, dir, pgdata, logPath, port, password, settings, runAs, log)
		if err == nil {
			if err := writeFileAtomic(filepath.Join(dir, "port"), []byte(strconv.Itoa(int(port))+"\n"), 0o644); err != nil {
				_ = c.halt()
				return nil, err
			}
			if recorded != 0 && recorded != port {
				c.movedFrom = recorded
			}
			return c, nil
		}
		if !errors.Is(err, errPortTaken) || explicit || attempt == portAttempts {
			return nil, err
		}
		log.Info("port taken while postgres started, retrying with another", "port", port)
		if port, err = randomPort(); err != nil {
			return nil, err
		}
	}
}

// Host returns the address the cluster listens on: always "127.0.0.1".
func (c *Cluster) Host() string { return localhost }

// Port returns the TCP port the cluster listens on.
func (c *Cluster) Port() uint16 { return c.port }

// MovedFrom returns the port the previous start recorded when this start had
// to take another one (the recorded port was taken), else 0. Anything stored
// with the old port, such as tenants' routes, needs updating.
func (c *Cluster) MovedFrom() uint16 { return c.movedFrom }

// AdminUser returns the superuser's name, "postgres".
func (c *Cluster) AdminUser() string { return adminUser }

// AdminPassword returns the superuser's password (stored in
// Dir/admin.password). It is a secret: don't log it.
func (c *Cluster) AdminPassword() string { return c.password }

// AdminDSN returns a URL connecting to database as the superuser, without
// TLS (the server only listens on loopback). It contains the password: don't
// log it; log the Cluster (whose String masks it) instead.
func (c *Cluster) AdminDSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(adminUser, c.password),
		Host:     net.JoinHostPort(localhost, strconv.Itoa(int(c.port))),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// String describes the cluster with its password masked, so a Cluster is
// safe to log or print with %v.
func (c *Cluster) String() string {
	return fmt.Sprintf("postgres://%s:xxxxx@%s (dir %s)", adminUser, net.JoinHostPort(localhost, strconv.Itoa(int(c.port))), c.dir)
}

// Done returns a channel closed when the postmaster has exited, whether
// through Stop or not: `pgtenant dev` watches it to notice a crash.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// Err returns nil while the postmaster runs and after a clean Stop. If it
// exited any other way (crashed, killed, failed shutdown) Err describes how,
// with the last lines of postgres.log.
func (c *Cluster) Err() error {
	select {
	case <-c.done:
		return c.exitErr
	default:
		return nil
	}
}

// Stop shuts the server down and waits for the postmaster to exit. It asks
// for a fast shutdown (SIGINT: abort transactions, checkpoint); if ctx ends
// first it escalates to an immediate shutdown (SIGQUIT, crash recovery on
// next start) and finally SIGKILLs the process group. Stop is idempotent and
// safe for concurrent use; every call returns once the postmaster is gone.
// It returns Err() after a normal stop, or ctx's error if it had to escalate.
func (c *Cluster) Stop(ctx context.Context) error {
	select {
	case <-c.done:
		return c.exitErr
	default:
	}
	c.stopping.Store(true)
	_ = c.cmd.Process.Signal(syscall.SIGINT) // os.ErrProcessDone if it just exited
	select {
	case <-c.done:
		return c.exitErr
	case <-ctx.Done():
	}
	select {
	case <-c.done:
		return c.exitErr
	default:
	}
	_ = c.halt()
	return fmt.Errorf("local: stop postgres (pid %d): %w: forced an immediate shutdown", c.cmd.Process.Pid, ctx.Err())
}

// halt forces the postmaster down: SIGQUIT (immediate shutdown, which also
// stops its children), then SIGKILL to the whole process group if it takes
// longer than haltGrace. It returns once the postmaster has been reaped.
func (c *Cluster) halt() error {
	c.stopping.Store(true)
	_ = c.cmd.Process.Signal(syscall.SIGQUIT)
	t := time.NewTimer(haltGrace)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		// Setpgid made the postmaster a group leader: -pid also reaches
		// children that have not yet called setsid. Those that have exit
		// once they notice the postmaster is gone, and the next start
		// waits for them (waitOrphans).
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	return c.exitErr
}

// waitPostmaster reaps the postmaster and records how it exited. Every
// Cluster runs exactly one; it ends when the postmaster exits.
func (c *Cluster) waitPostmaster() {
	err := c.cmd.Wait()
	if err == nil && !c.stopping.Load() {
		err = errors.New("exit status 0")
	}
	if err != nil {
		what := "exited unexpectedly"
		switch {
		case c.stopping.Load():
			what = "exited with an error during shutdown"
		case !c.ready.Load():
			what = "exited during start-up"
		}
		c.exitErr = fmt.Errorf("local: postgres (pid %d, port %d) %s: %w%s",
			c.cmd.Process.Pid, c.port, what, err, logTail(c.logPath, c.logFrom))
	}
	close(c.done)
}

// errPortTaken marks a start-up that failed because another process bound
// the port first; StartCluster retries those with another random port.
var errPortTaken = errors.New("local: port already in use")

func startPostmaster(ctx context.Context, binDir, dir, pgdata, logPath string, port uint16, password string,
	settings []string, runAs *runAs, log *slog.Logger,
) (*Cluster, error) {
	// A postmaster that died (killed, or halted below) may have left
	// children holding its shared memory; postgres won't start until they
	// are gone.
	if err := waitOrphans(ctx, pgdata, log); err != nil {
		return nil, err
	}
	args := []string{
		"-D", pgdata,
		"-c", "listen_addresses=" + localhost,
		"-c", "port=" + strconv.Itoa(int(port)),
		"-c", "unix_socket_directories=", // no socket file permissions to get wrong
		"-c", "password_encryption=scram-sha-256",
	}
	args = append(args, settings...)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	defer logf.Close() // the child has its own copy of the descriptor
	from, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = pgdata
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// SIGINT on parent death is a fast shutdown: the cluster does not
	// outlive pgtenant or a test binary. Setpgid keeps a terminal's Ctrl-C
	// away from postgres; pgtenant stops it itself.
	cmd.SysProcAttr = runAs.sysProcAttr(syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("local: start postgres: %w", err)
	}
	c := &Cluster{
		dir:      dir,
		port:     port,
		password: password,
		cmd:      cmd,
		logPath:  logPath,
		logFrom:  from,
		done:     make(chan struct{}),
	}
	go c.waitPostmaster()

	t0 := time.Now()
	if err := c.waitReady(ctx); err != nil {
		_ = c.halt()
		return nil, err
	}
	c.ready.Store(true)
	log.Info("postgres ready", "pid", cmd.Process.Pid, "port", port, "dir", dir, "took", time.Since(t0))
	return c, nil
}

// waitReady polls until the admin can log in. It fails once the postmaster
// exits (classifying a lost port race as errPortTaken and a locked data
// directory as ErrInUse), when ctx ends, or when the password is refused.
func (c *Cluster) waitReady(ctx context.Context) error {
	cc, err := pgconn.ParseConfig(c.AdminDSN("postgres"))
	if err != nil {
		return fmt.Errorf("local: %w", err) // not reached: we built the DSN
	}
	cc.ConnectTimeout = 2 * time.Second
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		err := ping(ctx, cc)
		if err == nil {
			return nil
		}
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && strings.HasPrefix(pgErr.Code, "28") {
			// Either our postmaster lost the port to another server (it is
			// about to exit) or Dir/admin.password doesn't match pgdata.
			t := time.NewTimer(time.Second)
			select {
			case <-c.done:
				t.Stop()
				return c.startError()
			case <-t.C:
			}
			return fmt.Errorf("local: postgres on port %d refused the admin login (SQLSTATE %s): does %s belong to this data directory?",
				c.port, pgErr.Code, filepath.Join(c.dir, "admin.password"))
		}
		select {
		case <-c.done:
			return c.startError()
		case <-ctx.Done():
			return fmt.Errorf("local: waiting for postgres on port %d: %w (last error: %v)%s",
				c.port, ctx.Err(), err, logTail(c.logPath, c.logFrom))
		case <-tick.C:
		}
	}
}

// ping reports whether the server accepts the admin's login. A missing
// "postgres" database still proves the server is up and the password right.
func ping(ctx context.Context, cc *pgconn.Config) error {
	conn, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "3D000" {
			return nil
		}
		return err
	}
	return conn.Close(ctx)
}

// startError explains why the postmaster exited during start-up.
func (c *Cluster) startError() error {
	tail := logTail(c.logPath, c.logFrom)
	switch {
	case strings.Contains(tail, "Address already in use"):
		return fmt.Errorf("%w: %d%s", errPortTaken, c.port, tail)
	case strings.Contains(tail, `lock file "postmaster.pid" already exists`):
		return fmt.Errorf("%w: %s%s", ErrInUse, filepath.Join(c.dir, "pgdata"), tail)
	}
	return c.exitErr
}

// prepareDirs creates Dir and Dir/pgdata and, when postgres runs as another
// user, checks that it can reach pgdata and owns it.
func prepareDirs(dir, pgdata string, ra *runAs, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	if ra != nil {
		if err := ensureTraversable(filepath.Dir(pgdata), ra, log); err != nil {
			return err
		}
	}
	if err := os.Mkdir(pgdata, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("local: %w", err)
	}
	fi, err := os.Stat(pgdata)
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("local: %s is not a directory", pgdata)
	}
	if ra != nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != ra.uid {
			if empty, err := isEmptyDir(pgdata); err != nil || !empty {
				return fmt.Errorf("local: %s is owned by uid %d but postgres runs as %s (uid %d): chown -R %s it or use another Dir",
					pgdata, st.Uid, ra.name, ra.uid, ra.name)
			}
			if err := ra.chown(pgdata); err != nil {
				return err
			}
		}
	}
	// postgres refuses a data directory with group/other access (0750 is
	// allowed but initdb never sets it for us).
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(pgdata, 0o700); err != nil {
			return fmt.Errorf("local: %w", err)
		}
	}
	return nil
}

// fallbackRoot holds the data directories of clusters whose Dir the
// postgres OS user cannot reach (see reachablePGData).
const fallbackRoot = "/var/lib/pgtenant/clusters"

// reachablePGData returns where PGDATA lives when postgres runs as ra:
// normally Dir/pgdata. When ra cannot reach Dir because a parent directory
// is closed to it (a checkout under root's 0700 home, say), the data goes to
// a new directory under fallbackRoot and Dir/pgdata becomes a symlink to it,
// so later starts find it again. Parents are never chmod'ed behind the
// user's back.
func reachablePGData(dir string, ra *runAs, log *slog.Logger) (string, error) {
	link := filepath.Join(dir, "pgdata")
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(link)
		if err != nil {
			return "", fmt.Errorf("local: %s points to a missing data directory (%w): remove the link to start over", link, err)
		}
		return target, nil
	}
	if parentsTraversable(dir, ra) {
		return link, nil
	}
	if fi, err := os.Lstat(link); err == nil {
		if empty, err := isEmptyDir(link); err != nil || !empty || !fi.IsDir() {
			return link, nil // existing data: let prepareDirs explain the problem
		}
		if err := os.Remove(link); err != nil {
			return "", fmt.Errorf("local: %w", err)
		}
	}
	for _, d := range []string{filepath.Dir(fallbackRoot), fallbackRoot} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return "", fmt.Errorf("local: %w", err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return "", fmt.Errorf("local: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("local: %w", err)
	}
	target := filepath.Join(fallbackRoot, filepath.Base(dir)+"-"+strings.ToLower(rand.Text()[:10]))
	if err := os.Symlink(target, link); err != nil {
		return "", fmt.Errorf("local: %w", err)
	}
	log.Info("postgres cannot reach the cluster directory; keeping its data elsewhere",
		"os_user", ra.name, "dir", dir, "pgdata", target, "link", link)
	return target, nil
}

// parentsTraversable reports whether ra can search every parent of dir
// (dir itself is ours to fix).
func parentsTraversable(dir string, ra *runAs) bool {
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil && !ra.canTraverse(fi) {
			return false
		}
		if p == filepath.Dir(p) {
			return true
		}
	}
}

// ensureTraversable checks that the postgres OS user can search every
// directory down to dir. dir itself is ours by contract, so we fix it; its
// parents are not, so they are an error.
func ensureTraversable(dir string, ra *runAs, log *slog.Logger) error {
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("local: %w", err)
		}
		if !ra.canTraverse(fi) {
			st, _ := fi.Sys().(*syscall.Stat_t)
			if p == dir && st != nil && int(st.Uid) == os.Geteuid() {
				mode := fi.Mode().Perm() | 0o011
				log.Info("making cluster directory traversable by postgres", "dir", dir, "mode", mode)
				if err := os.Chmod(dir, mode); err != nil {
					return fmt.Errorf("local: %w", err)
				}
			} else {
				return fmt.Errorf("local: postgres runs as OS user %q, which cannot traverse %s (mode %v): "+
					"choose a cluster directory it can reach (e.g. under /var/lib or /tmp, not under a 0700 home or t.TempDir()) "+
					"or grant it access (chmod o+x %s)", ra.name, p, fi.Mode().Perm(), p)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// dataVersion returns the major version in pgdata/PG_VERSION, or "" if pgdata
// is empty and needs initdb.
func dataVersion(pgdata string) (string, error) {
	b, err := os.ReadFile(filepath.Join(pgdata, "PG_VERSION"))
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("local: %w", err)
	}
	empty, err := isEmptyDir(pgdata)
	if err != nil {
		return "", fmt.Errorf("local: %w", err)
	}
	if !empty {
		return "", fmt.Errorf("local: %s is not empty but has no PG_VERSION (an interrupted initdb?): remove it to initialise a new cluster", pgdata)
	}
	return "", nil
}

// peekVersion returns pgdata's major version if it has one.
func peekVersion(pgdata string) string {
	b, _ := os.ReadFile(filepath.Join(pgdata, "PG_VERSION"))
	return strings.TrimSpace(string(b))
}

// findBinDir locates initdb and postgres. An existing data directory can only
// be run by its own major version, so that one is preferred.
func findBinDir(binDir, version string) (string, error) {
	if binDir != "" {
		if hasBinaries(binDir) {
			return binDir, nil
		}
		return "", fmt.Errorf("%w: no initdb and postgres in BinDir %s", ErrNoPostgres, binDir)
	}
	if version != "" {
		if d := filepath.Join("/usr/lib/postgresql", version, "bin"); hasBinaries(d) {
			return d, nil
		}
	}
	var dirs []string
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"} {
		m, _ := filepath.Glob(pattern) // the patterns are valid
		dirs = append(dirs, m...)
	}
	slices.SortFunc(dirs, func(a, b string) int { return compareVersions(dirVersion(b), dirVersion(a)) })
	for _, d := range dirs {
		if hasBinaries(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if d, err := filepath.Abs(filepath.Dir(p)); err == nil && hasBinaries(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w: looked in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin and $PATH; "+
		"install the PostgreSQL server (e.g. apt-get install postgresql) or set BinDir", ErrNoPostgres)
}

func hasBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// dirVersion extracts "16" from /usr/lib/postgresql/16/bin or /usr/pgsql-16/bin.
func dirVersion(binDir string) string {
	v := filepath.Base(filepath.Dir(binDir))
	return strings.TrimPrefix(v, "pgsql-")
}

// compareVersions compares dotted numeric versions ("9.6" < "16").
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// adminPassword reads Dir/admin.password, creating it for a cluster about
// to be initialised. It is written before initdb so that a crash between the
// two never leaves a cluster nobody can log in to.
func adminPassword(dir string, initialised bool) (string, error) {
	path := filepath.Join(dir, "admin.password")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if pw := strings.TrimSpace(string(b)); pw != "" {
			return pw, nil
		}
		if initialised {
			return "", fmt.Errorf("local: %s is empty", path)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("local: %w", err)
	case initialised:
		return "", fmt.Errorf("local: %s is missing, so the cluster's admin password is lost: "+
			"restore the file, or remove %s to start over with an empty cluster", path, filepath.Join(dir, "pgdata"))
	}
	raw := make([]byte, 24)
	_, _ = rand.Read(raw) // never fails on Linux
	pw := hex.EncodeToString(raw)
	if err := writeFileAtomic(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", err
	}
	return pw, nil
}

// initdb creates the cluster in pgdata with SCRAM authentication and a
// pg_hba.conf that only admits SCRAM logins over loopback TCP.
func initdb(ctx context.Context, binDir, dir, pgdata, logPath, password string, ra *runAs, noSync bool) (err error) {
	// The password reaches initdb through a file postgres' OS user can read:
	// never on the command line, where ps would show it.
	pwf, err := os.CreateTemp(filepath.Dir(pgdata), ".initdb-pw-") // reachable by ra, unlike dir perhaps
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	defer os.Remove(pwf.Name())
	_, err = pwf.WriteString(password + "\n")
	if err = errors.Join(err, pwf.Close(), ra.chown(pwf.Name())); err != nil {
		return fmt.Errorf("local: initdb password file: %w", err)
	}

	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	defer logf.Close()
	from, _ := logf.Seek(0, io.SeekEnd)

	args := []string{
		"-D", pgdata,
		"--auth=scram-sha-256",
		"--username=" + adminUser,
		"--pwfile=" + pwf.Name(),
		"--encoding=UTF8",
		"--no-locale",
	}
	if noSync {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = pgdata
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = ra.sysProcAttr(syscall.SIGKILL)
	// SIGINT lets initdb remove what it created; SIGKILL after WaitDelay.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	defer func() {
		if err != nil {
			// initdb cleans up after itself unless it was killed; make sure
			// the next start sees an empty directory again.
			clearDir(pgdata)
		}
	}()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("local: initdb %s: %w%s", pgdata, err, logTail(logPath, from))
	}

	hba := filepath.Join(pgdata, "pg_hba.conf")
	const hbaConf = `# Written by pgtenant: SCRAM password logins over loopback TCP only.
# The server has no Unix sockets and only listens on 127.0.0.1.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
`
	if err := ra.writeFile(hba, []byte(hbaConf)); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

func clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// childEnv is the environment of initdb and postgres: ours minus anything
// that could change their behaviour (PG* variables, locale). The C locale
// keeps server messages in English, which startError matches on.
func childEnv() []string {
	env := []string{"LANG=C", "LC_ALL=C"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// settingArgs validates cfg.Settings and turns them into sorted -c flags.
func settingArgs(settings map[string]string) ([]string, error) {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return nil, fmt.Errorf("local: invalid setting name %q", k)
		}
		if slices.Contains(reservedSettings, strings.ToLower(k)) {
			return nil, fmt.Errorf("local: setting %q is managed by pgtenant and cannot be overridden", k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	args := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args, nil
}

// firstPort returns the port for the first start attempt, the port recorded
// by the previous start (0 if none), and whether the caller asked for the
// port explicitly (explicit ports are never replaced).
func firstPort(dir string, want int, log *slog.Logger) (port, recorded uint16, explicit bool, err error) {
	path := filepath.Join(dir, "port")
	if b, err := os.ReadFile(path); err == nil {
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 16)
		if err != nil || n == 0 {
			log.Warn("ignoring unreadable port file", "path", path)
		} else {
			recorded = uint16(n)
		}
	}
	switch {
	case want != 0:
		if !portFree(uint16(want)) {
			return 0, recorded, true, fmt.Errorf("local: port %d on %s is in use", want, localhost)
		}
		return uint16(want), recorded, true, nil
	case recorded != 0 && waitPortFree(recorded, recordedPortWait):
		return recorded, recorded, false, nil
	case recorded != 0:
		// Routes stored with the old host:port need updating (MovedFrom);
		// still better than refusing to start.
		log.Warn("recorded port is in use, picking another", "port", recorded)
	}
	port, err = randomPort()
	return port, recorded, false, err
}

// randomPort picks a random port in [minRandomPort, maxRandomPort] that is
// bindable on 127.0.0.1 right now. Postgres may still lose it to someone
// else before binding, which StartCluster handles by retrying.
func randomPort() (uint16, error) {
	for range 100 {
		p := uint16(minRandomPort + mathrand.IntN(maxRandomPort-minRandomPort+1))
		if portFree(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("local: no free port in [%d, %d] on %s after 100 tries", minRandomPort, maxRandomPort, localhost)
}

// recordedPortWait is how long a restart waits for its recorded port: the
// usual holder is this directory's previous postmaster, still exiting.
const recordedPortWait = 10 * time.Second

// waitPortFree polls until p is free or wait has passed.
func waitPortFree(p uint16, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if portFree(p) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func portFree(p uint16) bool {
	ln, err := net.Listen("tcp4", net.JoinHostPort(localhost, strconv.Itoa(int(p))))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(perm), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("local: write %s: %w", path, err)
	}
	return nil
}

// rotateLog moves an oversized postgres.log aside (keeping one old copy).
func rotateLog(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() < maxLogSize {
		return nil
	}
	if err := os.Rename(path, path+".1"); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// logTail is logtail.Since, saying so when the log has nothing new.
func logTail(path string, from int64) string {
	if t := logtail.Since(path, from); t != "" {
		return t
	}
	return fmt.Sprintf(" (%s has nothing new)", path)
}
