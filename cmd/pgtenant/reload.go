package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"time"

	adminapi "github.com/pgtenant/pgtenant/admin"
)

// reloader is how `pgtenant serve` re-reads its configuration on SIGHUP.
type reloader struct {
	// load reads the file and the environment again, applies the command
	// line's overrides and validates the result.
	load func() (fileConfig, error)
	// level is the running logger's level.
	level *slog.LevelVar
}

// reloadable are the keys (and key prefixes, ending in ".") that SIGHUP
// applies to a running router. Every other key needs a restart; a reload
// that changes one says so in a warning. The TLS certificate and key files
// are read again too, but changing their paths (or tls.mode) needs a
// restart.
var reloadable = []string{"log.level", "limits.", "blocked_tenants"}

// newLevelLogger is newLogger with a level that can change later.
func newLevelLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv, nil
}

// hupHandler reloads the configuration on SIGHUP.
type hupHandler struct {
	cur   fileConfig // the running configuration
	rl    *reloader
	log   *slog.Logger
	parts surfaceParts
}

// notifyHUP starts listening for SIGHUP at once (so that a SIGHUP sent as
// soon as the router is up cannot kill the process) and returns the loop
// that handles them until ctx ends.
func (h *hupHandler) notifyHUP() (loop func(ctx context.Context)) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return func(ctx context.Context) {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				_ = h.reload(ctx)
			}
		}
	}
}

// reload re-reads the configuration and applies the reloadable keys: the
// log level, the limits, the client TLS certificate (files read again) and
// the block list (read again from the catalog). A file that does not load
// or validate changes nothing: the running configuration stays, and the
// reason is logged as a warning. Changed keys that need a restart are
// named in a warning, never applied.
func (h *hupHandler) reload(ctx context.Context) error {
	nfc, err := h.rl.load()
	if err != nil {
		h.log.Warn("config reload failed; keeping the running configuration", "err", err)
		return err
	}
	var applied []string
	if h.rl.level != nil {
		if l, err := parseLevel(nfc.Log.Level); err == nil && l != h.rl.level.Level() {
			h.rl.level.Set(l)
			applied = append(applied, "log.level")
		}
	}
	h.cur.Log.Level = nfc.Log.Level
	applied = append(applied, h.applyLimits(nfc)...)

	if err := h.parts.srv.ReloadTLS(); err != nil {
		h.log.Warn("config reload: TLS certificate not reloaded; keeping the current one", "err", err)
	}
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = adminapi.RefreshBlocked(bctx, h.parts.blocks, h.parts.srv)
	cancel()
	if err != nil {
		h.log.Warn("config reload: block list not refreshed; keeping the last one", "err", err)
	}

	if keys := changedKeys(h.cur, nfc); len(keys) > 0 {
		h.log.Warn("config reload: these keys changed but only take effect after a restart", "keys", strings.Join(keys, ","))
	}
	h.log.Info("config reloaded", "applied", strings.Join(applied, ","))
	return nil
}

// applyLimits applies nfc's limits (proxy and resolver) and its
// blocked_tenants (applied by the block-list refresh that follows) and
// records them as running; it returns what it changed.
func (h *hupHandler) applyLimits(nfc fileConfig) []string {
	var applied []string
	if nfc.Limits != h.cur.Limits {
		h.parts.srv.SetLimits(nfc.limits())
		h.parts.res.SetMaxConcurrentCreates(nfc.Limits.MaxConcurrentCreates)
		h.cur.Limits = nfc.Limits
		applied = append(applied, "limits")
	}
	if !slices.Equal(nfc.BlockedTenants, h.cur.BlockedTenants) {
		h.parts.blocks.setStatic(nfc.BlockedTenants)
		h.cur.BlockedTenants = nfc.BlockedTenants
		applied = append(applied, "blocked_tenants")
	}
	return applied
}

// changedKeys lists the keys whose values differ between a and b, in the
// dotted form of the YAML file, leaving out the reloadable ones. It never
// reports values (some are secrets).
func changedKeys(a, b fileConfig) []string {
	var keys []string
	var walk func(prefix string, x, y reflect.Value)
	walk = func(prefix string, x, y reflect.Value) {
		t := x.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			if isReloadable(key) {
				continue
			}
			fx, fy := x.Field(i), y.Field(i)
			if f.Type.Kind() == reflect.Struct {
				walk(key+".", fx, fy)
				continue
			}
			if !reflect.DeepEqual(fx.Interface(), fy.Interface()) {
				keys = append(keys, key)
			}
		}
	}
	walk("", reflect.ValueOf(a), reflect.ValueOf(b))
	return keys
}

func isReloadable(key string) bool {
	for _, r := range reloadable {
		if key == r || strings.HasSuffix(r, ".") && (strings.HasPrefix(key, r) || key+"." == r) {
			return true
		}
	}
	return false
}
