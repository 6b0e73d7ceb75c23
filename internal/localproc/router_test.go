package localproc_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localproc"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// fakeRouterEnv makes the test binary a stand-in for `pgtenant serve`
// (see TestMain): "serve" prints the ready line and exits 0 on SIGTERM,
// "hang" never listens, "fail" writes to its log and exits 3 at once.
const fakeRouterEnv = "LOCALPROC_TEST_FAKE_ROUTER"

func TestMain(m *testing.M) {
	switch os.Getenv(fakeRouterEnv) {
	case "":
		os.Exit(m.Run())
	case "serve":
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("starting")
		fmt.Printf("pgtenant: routing tenants on 127.0.0.1:4321 (config %s)\n", os.Args[len(os.Args)-1])
		<-term
		os.Exit(0)
	case "hang":
		time.Sleep(time.Hour) // killed
	default:
		fmt.Fprintln(os.Stderr, "fake router: no catalog")
		os.Exit(3)
	}
}

func fakeRouter(t *testing.T, mode string) localproc.RouterConfig {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return localproc.RouterConfig{
		Binary:  exe,
		Config:  filepath.Join(dir, "router.yaml"),
		LogPath: filepath.Join(dir, "router.log"),
		Env:     append(os.Environ(), fakeRouterEnv+"="+mode),
	}
}

func TestRouter(t *testing.T) {
	pgtest.CheckGoroutines(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := fakeRouter(t, "serve")
	r, err := localproc.StartRouter(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := "127.0.0.1:4321 (config " + cfg.Config + ")"; r.Addr() != want || r.PID() <= 0 {
		t.Errorf("Addr %q, PID %d; want %q and a pid", r.Addr(), r.PID(), want)
	}
	if err := r.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-r.Done():
	default:
		t.Error("Done is open after Stop")
	}
	if err := r.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestRouterExitsDuringStartUp(t *testing.T) {
	pgtest.CheckGoroutines(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := localproc.StartRouter(ctx, fakeRouter(t, "fail"))
	if err == nil || !strings.Contains(err.Error(), "exited during start-up: exit status 3") || !strings.Contains(err.Error(), "no catalog") {
		t.Fatalf("got %v, want the exit status and the log's tail", err)
	}
}

func TestRouterStartCanceled(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cfg := fakeRouter(t, "serve")
	cfg.Env = append(cfg.Env[:len(cfg.Env)-1], fakeRouterEnv+"=hang")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := localproc.StartRouter(ctx, cfg); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}
