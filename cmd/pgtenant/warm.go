package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	adminapi "github.com/pgtenant/pgtenant/admin"
)

// warmFlags are tenants warm's own flags.
type warmFlags struct {
	file        *string
	concurrency *int
	wait        *bool
	noWait      *bool
	poll        *time.Duration
}

func defineWarmFlags(fs *pflag.FlagSet) warmFlags {
	return warmFlags{
		file:        fs.String("file", "", "warm: also the tenant IDs in this file, one a line (# comments; - for standard input)"),
		concurrency: fs.Int("concurrency", 4, "warm: tenants warmed at once"),
		wait:        fs.Bool("wait", true, "warm: wait until tenants a slow provider creates in the background are ready"),
		noWait:      fs.Bool("no-wait", false, "warm: return once their creation has started (same as --wait=false)"),
		poll:        fs.Duration("poll-interval", 5*time.Second, "warm: how often to ask how a background creation is getting on"),
	}
}

// warmTenants is the tenant IDs of tenants warm: the arguments, then
// those of --file, without repeats.
func (f warmFlags) tenants(args []string, stdin io.Reader) ([]string, error) {
	ids := slices.Clone(args)
	if *f.file != "" {
		var r io.Reader = stdin
		if *f.file != "-" {
			fh, err := os.Open(*f.file)
			if err != nil {
				return nil, fmt.Errorf("--file: %w", err)
			}
			defer fh.Close()
			r = fh
		}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line, _, _ := strings.Cut(sc.Text(), "#")
			if line = strings.TrimSpace(line); line != "" {
				ids = append(ids, line)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("--file %s: %w", *f.file, err)
		}
	}
	seen := make(map[string]bool, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: tenants warm takes tenant IDs (arguments or --file)", errUsage)
	}
	if *f.concurrency < 1 {
		return nil, fmt.Errorf("%w: --concurrency %d: want at least 1", errUsage, *f.concurrency)
	}
	if *f.poll <= 0 {
		return nil, fmt.Errorf("%w: --poll-interval %s: want a positive duration", errUsage, *f.poll)
	}
	return out, nil
}

// warmer runs tenants warm through a router's admin API.
type warmer struct {
	c        apiClient
	wait     bool
	interval time.Duration

	mu sync.Mutex // serialises lines to w
	w  io.Writer
}

func (wm *warmer) say(format string, args ...any) {
	wm.mu.Lock()
	defer wm.mu.Unlock()
	fmt.Fprintf(wm.w, format+"\n", args...)
}

// runWarm warms tenants, concurrency at a time, printing a line per
// tenant as it progresses, and fails naming the tenants that failed.
func runWarm(ctx context.Context, w io.Writer, c apiClient, tenants []string, f warmFlags) error {
	wm := &warmer{c: c, wait: *f.wait && !*f.noWait, interval: *f.poll, w: w}
	var g errgroup.Group
	g.SetLimit(*f.concurrency)
	var mu sync.Mutex
	var failed []string
	creating := 0
	for _, id := range tenants {
		g.Go(func() error {
			ready, err := wm.warm(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				failed = append(failed, id)
				wm.say("%s: failed: %v", id, err)
			case !ready:
				creating++
			}
			return nil
		})
	}
	_ = g.Wait()
	slices.Sort(failed)
	wm.say("warm: %d tenants: %d ready, %d being created, %d failed",
		len(tenants), len(tenants)-creating-len(failed), creating, len(failed))
	if len(failed) > 0 {
		return fmt.Errorf("warm: %d of %d tenants failed: %s", len(failed), len(tenants), strings.Join(failed, ", "))
	}
	return ctx.Err()
}

// warm warms one tenant. ready is false when its background creation
// goes on and --no-wait said not to wait for it.
func (wm *warmer) warm(ctx context.Context, tenant string) (ready bool, err error) {
	start := time.Now()
	t := "/v1/tenants/" + url.PathEscape(tenant)
	res, err := wm.post(ctx, t)
	if err != nil {
		return false, err
	}
	if res.State != "creating" { // "ready"; older routers say nothing
		wm.say("%s: ready (via %s, %.3fs)", tenant, res.Via, res.Seconds)
		return true, nil
	}
	wm.say("%s: being created (%s)", tenant, about(res.RemainingSeconds))
	if !wm.wait {
		return false, nil
	}
	lastSaid := time.Now()
	tick := time.NewTicker(wm.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
		var st adminapi.TenantStatus
		err := wm.c.do(ctx, http.MethodGet, t, &st)
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.status == http.StatusNotFound:
			st = adminapi.TenantStatus{} // nothing running: start (or take over) again below
		case err != nil:
			return false, err
		}
		switch {
		case st.InCatalog:
			wm.say("%s: ready (created in the background, %s)", tenant, time.Since(start).Round(time.Second))
			return true, nil
		case st.Creation != nil && st.Creation.State == "failed":
			return false, fmt.Errorf("the background creation failed: %s", st.Creation.Error)
		case st.Creation != nil:
			if time.Since(lastSaid) >= time.Minute {
				lastSaid = time.Now()
				wm.say("%s: still being created (for %s; %s)", tenant,
					time.Since(st.Creation.Started).Round(time.Second), about(st.Creation.RemainingSeconds))
			}
		default:
			// No creation recorded and no route: its creator stopped (a
			// router restart) and nobody took it over yet. Warm again.
			if res, err = wm.post(ctx, t); err != nil {
				return false, err
			}
			if res.State != "creating" {
				wm.say("%s: ready (via %s, %s)", tenant, res.Via, time.Since(start).Round(time.Second))
				return true, nil
			}
		}
	}
}

func (wm *warmer) post(ctx context.Context, t string) (adminapi.ActionResult, error) {
	var res adminapi.ActionResult
	err := wm.c.do(ctx, http.MethodPost, t+"/warm", &res)
	return res, err
}

// about says how long a creation should still take.
func about(remaining *float64) string {
	if remaining == nil {
		return "no estimate"
	}
	n := max(int((*remaining+59)/60), 1)
	if n == 1 {
		return "about 1 minute left"
	}
	return fmt.Sprintf("about %d minutes left", n)
}
