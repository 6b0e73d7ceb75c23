package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/internal/slowprov"
	"github.com/pgtenant/pgtenant/provision/local"
	"github.com/pgtenant/pgtenant/router"
)

// startSlowRouter runs a router whose provider is the local one held like
// a minutes-long cloud create (slowprov), with its admin API, until the
// test ends. It returns the admin URL.
func startSlowRouter(t *testing.T) (*slowprov.Provider, string) {
	t.Helper()
	c := pgtest.Shared(t)
	pool := pgtest.NewPool(t, c.AdminDSN("postgres"))
	// A prefix of its own per run: tenant databases outlive the test in
	// the shared cluster, and -count=N would find the last run's.
	lp := local.New(local.Config{Prefix: fmt.Sprintf("warm%d_", time.Now().UnixNano()%1e6)}, pool)
	if _, err := lp.EnsureTemplate(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	prov := slowprov.New(lp, 10*time.Minute)
	cfg := router.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Auth.Password = "warm-secret"
	cfg.Catalog.Key = catalog.NewKey()
	cfg.Catalog.DSN = c.AdminDSN(pgtest.CreateDB(t, c))
	cfg.Provider.Local.AdminDSN = c.AdminDSN("postgres")
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Admin.Token = "warm-token"
	cfg.DrainTimeout = 0
	cfg.Tenant.CreateWait = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	r, err := router.New(ctx, cfg, router.Options{Upstream: &router.Upstream{Provider: prov, Close: func() {}}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return prov, "http://" + r.AdminAddr().String()
}

// warmRun runs `pgtenant tenants warm args...` against api in the
// background; the channel yields its output and error.
func warmRun(api string, args ...string) <-chan [2]any {
	ch, _ := warmRunOut(api, args...)
	return ch
}

// warmRunOut is warmRun that also returns the output as it is written.
func warmRunOut(api string, args ...string) (<-chan [2]any, *syncBuf) {
	out := make(chan [2]any, 1)
	b := &syncBuf{mu: make(chan struct{}, 1)} // made before it is shared: lock() would make it lazily
	go func() {
		full := append([]string{"tenants", "warm", "--admin", api, "--token", "warm-token", "--poll-interval", "20ms"}, args...)
		err := run(context.Background(), full, b, b)
		out <- [2]any{b.String(), err}
	}()
	return out, b
}

func warmResult(t *testing.T, ch <-chan [2]any) (string, error) {
	t.Helper()
	select {
	case r := <-ch:
		err, _ := r[1].(error)
		return r[0].(string), err
	case <-time.After(2 * time.Minute):
		t.Fatal("tenants warm did not return")
	}
	return "", nil
}

// tenants warm against a slow provider: the creations start in the
// background (202), warm polls until they are ready, and exits non-zero
// when one fails; --no-wait returns once they have started.
func TestTenantsWarmSlowProvider(t *testing.T) {
	pgtest.CheckGoroutines(t)
	prov, api := startSlowRouter(t)

	t.Run("waits until ready", func(t *testing.T) {
		file := writeFile(t, "# tenants of the sign-up batch\nbeta\nalpha  # again\n\n")
		ch := warmRun(api, "alpha", "--file", file, "--concurrency", "2")
		poll.Until(t, 30*time.Second, "both creations to start", func() bool { return prov.Calls() == 2 })
		prov.Release()
		out, err := warmResult(t, ch)
		if err != nil {
			t.Fatalf("warm: %v\n%s", err, out)
		}
		for _, want := range []string{
			"alpha: being created (about 10 minutes left)", "beta: being created (about 10 minutes left)",
			"alpha: ready (created in the background", "beta: ready (created in the background",
			"warm: 2 tenants: 2 ready, 0 being created, 0 failed",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		// Warm again: in the catalog now, ready at once.
		out, err = warmResult(t, warmRun(api, "alpha"))
		if err != nil || !strings.Contains(out, "alpha: ready (via ") {
			t.Fatalf("second warm: %v\n%s", err, out)
		}
	})

	t.Run("no-wait", func(t *testing.T) {
		prov.Hold()
		out, err := warmResult(t, warmRun(api, "gamma", "--no-wait"))
		if err != nil || !strings.Contains(out, "gamma: being created") || !strings.Contains(out, "1 being created") {
			t.Fatalf("warm --no-wait: %v\n%s", err, out)
		}
		prov.Release()
	})

	t.Run("a failed creation fails warm", func(t *testing.T) {
		prov.Hold()
		ch, buf := warmRunOut(api, "delta")
		poll.Until(t, 30*time.Second, "the 202 of warm", func() bool { return strings.Contains(buf.String(), "delta: being created") })
		prov.Fail(errors.New("InsufficientDBInstanceCapacity"))
		prov.Release()
		out, err := warmResult(t, ch)
		if err == nil || !strings.Contains(err.Error(), "1 of 1 tenants failed: delta") ||
			!strings.Contains(out, "delta: failed: the background creation failed") || !strings.Contains(out, "InsufficientDBInstanceCapacity") {
			t.Fatalf("warm of a failing creation: %v\n%s", err, out)
		}
		var show syncBuf
		err = run(context.Background(), []string{"tenants", "show", "delta", "--admin", api, "--token", "warm-token"}, &show, &show)
		if err != nil || !strings.Contains(show.String(), "creation     failed at ") || !strings.Contains(show.String(), "InsufficientDBInstanceCapacity") {
			t.Fatalf("show of the failed tenant: %v\n%s", err, show.String())
		}
		prov.Fail(nil)
	})
}
