package localproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/logtail"
)

// A router in a child process: StartRouter runs `pgtenant serve` from a
// pgtenant executable, so that its memory and threads can be measured
// alone (`pgtenant bench --self`, internal/testbed). Like PgBouncer it lives
// as long as this process at most.

const (
	// routerReadyLine is what `pgtenant serve` prints on standard output
	// once it listens, followed by the address.
	routerReadyLine = "pgtenant: routing tenants on "
	// routerStartTimeout bounds a router's start, its template included.
	routerStartTimeout = 2 * time.Minute
)

// RouterConfig describes a router run as `Binary serve --config Config`.
// Binary and Config are required.
type RouterConfig struct {
	// Binary is the pgtenant executable. In a test binary that is not
	// pgtenant, it must be built or be the test binary re-running as
	// pgtenant (see cmd/pgtenant's TestMain).
	Binary string
	// Config is the path of the router's YAML configuration.
	Config string
	// LogPath is the file (created or truncated) receiving the router's
	// standard error, which is its log.
	LogPath string
	// Env is the router's whole environment, secrets included; nil means
	// ours.
	Env []string
}

// Router is a router running as `pgtenant serve` in a child process,
// started by StartRouter. Its methods are safe for concurrent use.
type Router struct {
	cmd     *exec.Cmd
	addr    string
	logPath string

	done    chan struct{} // closed by wait once the child is reaped
	exitErr error         // written by wait before done is closed
}

// StartRouter starts the router and returns once it listens (it prints its
// address), or fails after two minutes. ctx bounds the start-up only. The
// child runs in a process group of its own, so that a terminal's Ctrl-C
// reaches only this process, which then stops it; it gets SIGTERM if this
// process dies. On error nothing is left running.
func StartRouter(ctx context.Context, cfg RouterConfig) (*Router, error) {
	if cfg.Binary == "" || cfg.Config == "" || cfg.LogPath == "" {
		return nil, errors.New("start pgtenant serve: RouterConfig.Binary, Config and LogPath are required")
	}
	logf, err := os.OpenFile(cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	ready := &readyWriter{addr: make(chan string, 1)}
	cmd := exec.Command(cfg.Binary, "serve", "--config", cfg.Config)
	cmd.Env = cfg.Env
	cmd.Stdout, cmd.Stderr = ready, logf
	cmd.SysProcAttr = (*runAs)(nil).sysProcAttr(syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start pgtenant serve: %w", err)
	}
	r := &Router{cmd: cmd, logPath: cfg.LogPath, done: make(chan struct{})}
	go r.wait()
	t := time.NewTimer(routerStartTimeout)
	defer t.Stop()
	select {
	case r.addr = <-ready.addr:
		return r, nil
	case <-r.done:
		return nil, fmt.Errorf("pgtenant serve exited during start-up: %w%s", r.exitErr, logtail.Since(cfg.LogPath, 0))
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = errors.New("pgtenant serve did not start listening in time")
	}
	r.kill()
	return nil, fmt.Errorf("%w%s", err, logtail.Since(cfg.LogPath, 0))
}

func (r *Router) wait() {
	r.exitErr = r.cmd.Wait()
	close(r.done)
}

// Addr returns the address the router listens on, as it printed it.
func (r *Router) Addr() string { return r.addr }

// PID returns the router's process ID, for bench.Target.PID.
func (r *Router) PID() int { return r.cmd.Process.Pid }

// Done returns a channel closed once the process has exited.
func (r *Router) Done() <-chan struct{} { return r.done }

// Stop asks the router to shut down (SIGTERM, as a service manager would)
// and waits for it, killing it when ctx ends first. It returns an error,
// with the log's tail, when the router exited with one; it is idempotent.
func (r *Router) Stop(ctx context.Context) error {
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
	return fmt.Errorf("router (pid %d) did not exit on SIGTERM: killed it%s", r.PID(), logtail.Since(r.logPath, 0))
}

func (r *Router) exitStatus() error {
	if r.exitErr != nil {
		return fmt.Errorf("router (pid %d): %w%s", r.PID(), r.exitErr, logtail.Since(r.logPath, 0))
	}
	return nil
}

func (r *Router) kill() {
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
		if a, ok := strings.CutPrefix(string(w.line), routerReadyLine); ok && !w.sent {
			w.sent = true
			w.addr <- strings.TrimSpace(a)
		}
		w.line = w.line[:0]
	}
	return len(p), nil
}
