package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

const testAdminToken = "serve-admin-t0ken"

// waitFor polls cond until it holds or 20s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 20*time.Second, what, cond)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestServeAdmin runs `pgtenant serve` with the admin listener: health,
// metrics, the tenants commands through the admin API, SIGHUP reloads and
// readiness during the drain.
func TestServeAdmin(t *testing.T) {
	c := pgtest.Shared(t)
	db := pgtest.CreateDB(t, c)
	t.Setenv(router.EnvPassword, "serve-secret")
	t.Setenv(router.EnvAdminDSN, c.AdminDSN("postgres"))
	t.Setenv(router.EnvCatalogDSN, c.AdminDSN(db))
	t.Setenv(router.EnvCatalogKey, catalog.NewKey())
	t.Setenv(router.EnvAdminToken, testAdminToken)
	const base = "listen: 127.0.0.1:0\ndrain_timeout: 1m\nadmin:\n  listen: 127.0.0.1:0\nprovider:\n  local:\n    prefix: adm_\n"
	cfg := writeFile(t, base)

	m, stderr, stop := startRun(t, regexp.MustCompile(`routing tenants on (\S+)`), "serve", "--config", cfg)
	routerAddr := m[1]
	am := regexp.MustCompile(`msg="admin listening" addr=(\S+)`).FindStringSubmatch(stderr.String())
	if am == nil {
		t.Fatalf("no admin listening line:\n%s", stderr.String())
	}
	api := "http://" + am[1]
	dsn := func(tenant string) string {
		return "postgres://" + tenant + ":serve-secret@" + routerAddr + "/app?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// connect's connections close when the (sub)test t ends.
	connect := func(t *testing.T, tenant string) (*pgx.Conn, error) {
		conn, err := pgx.Connect(ctx, dsn(tenant))
		if err == nil {
			t.Cleanup(func() { _ = conn.Close(context.Background()) })
		}
		return conn, err
	}

	t.Run("health and metrics", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			if status, body := httpGet(t, api+p); status != 200 {
				t.Fatalf("%s: %d %s", p, status, body)
			}
		}
		for range 2 {
			query(t, dsn("acme"), "SELECT 1::text")
		}
		metric := func(line string) func() bool {
			return func() bool { _, body := httpGet(t, api+"/metrics"); return strings.Contains(body, "\n"+line+"\n") }
		}
		for _, line := range []string{
			"pgtenant_proxy_connections_accepted_total 2",
			"pgtenant_proxy_connections_active 0",
			`pgtenant_proxy_connections_finished_total{outcome="ok"} 2`,
			`pgtenant_proxy_resolve_seconds_count{via="created"} 1`,
			`pgtenant_proxy_resolve_seconds_count{via="cache"} 1`,
			"pgtenant_resolver_cache_misses_total 1",
			"pgtenant_resolver_cache_hits_total 1",
			"pgtenant_resolver_provisions_total 1",
		} {
			waitFor(t, line, metric(line))
		}
		_, body := httpGet(t, api+"/metrics")
		if strings.Contains(body, "acme") {
			t.Error("a tenant ID appears in the metrics")
		}
	})

	tenants := func(token string, args ...string) (string, error) {
		var out strings.Builder
		full := append([]string{"tenants"}, args...)
		full = append(full, "--admin", api)
		if token != "" {
			full = append(full, "--token", token)
		}
		err := run(context.Background(), full, &out, io.Discard)
		return out.String(), err
	}
	t.Run("tenants through the admin API", func(t *testing.T) {
		if _, err := tenants("wrong", "list"); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("wrong token: %v", err)
		}
		out, err := tenants("", "list") // token from the environment
		if err != nil || !strings.Contains(out, "acme") || !strings.Contains(out, "adm_acme") {
			t.Fatalf("list: %v\n%s", err, out)
		}
		if out, err = tenants("", "warm", "beta"); err != nil || !strings.Contains(out, "via created") {
			t.Fatalf("warm: %v\n%s", err, out)
		}
		if out, err = tenants("", "show", "beta"); err != nil || !strings.Contains(out, "adm_beta") || !strings.Contains(out, "cached       yes") {
			t.Fatalf("show: %v\n%s", err, out)
		}
		if out, err = tenants("", "evict", "beta"); err != nil || !strings.Contains(out, "was cached: yes") {
			t.Fatalf("evict: %v\n%s", err, out)
		}
		conn, err := connect(t, "acme")
		if err != nil {
			t.Fatal(err)
		}
		if out, err = tenants("", "block", "acme"); err != nil || !strings.Contains(out, "1 live sessions ended") {
			t.Fatalf("block: %v\n%s", err, out)
		}
		if _, err := conn.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
			t.Fatalf("blocked tenant's session: %v", err)
		}
		if _, err := connect(t, "acme"); sqlState(err) != "28000" {
			t.Fatalf("blocked tenant's connect: %v", err)
		}
		if out, err = tenants("", "unblock", "acme"); err != nil {
			t.Fatalf("unblock: %v\n%s", err, out)
		}
		if _, err := connect(t, "acme"); err != nil {
			t.Fatalf("connect after unblock: %v", err)
		}
		if out, err = tenants("", "pool-mode", "acme", "off"); err != nil || !strings.Contains(out, "pool mode off") {
			t.Fatalf("pool-mode: %v\n%s", err, out)
		}
		if out, err = tenants("", "show", "acme"); err != nil || !strings.Contains(out, "pool mode    off") {
			t.Fatalf("show after pool-mode: %v\n%s", err, out)
		}
		if _, err := tenants("", "pool-mode", "acme", "statement"); err == nil || !strings.Contains(err.Error(), "want session") {
			t.Fatalf("pool-mode statement: %v", err)
		}
		if out, err = tenants("", "pool-mode", "acme", "default"); err != nil {
			t.Fatalf("pool-mode default: %v\n%s", err, out)
		}
		if out, err = tenants("", "show", "acme"); err != nil || !strings.Contains(out, "pool mode    the router's default") {
			t.Fatalf("show after pool-mode default: %v\n%s", err, out)
		}
		if _, err := tenants("", "delete", "beta"); err == nil || !strings.Contains(err.Error(), "--yes") {
			t.Fatalf("delete without --yes: %v", err)
		}
		if out, err = tenants("", "delete", "beta", "--yes"); err != nil || !strings.Contains(out, "provider: deleted; catalog: deleted") {
			t.Fatalf("delete: %v\n%s", err, out)
		}
		if _, err := tenants("", "show", "beta"); err == nil || !strings.Contains(err.Error(), "404") {
			t.Fatalf("show after delete: %v", err)
		}
	})

	t.Run("pools through the admin API", func(t *testing.T) {
		var out strings.Builder
		if err := run(context.Background(), []string{"pools", "--admin", api}, &out, io.Discard); err != nil ||
			!strings.HasPrefix(out.String(), "pooling is off on this router") {
			t.Fatalf("pools (serve's default is off): %v\n%s", err, out.String())
		}
	})

	hup := func(t *testing.T, body, want string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		n := strings.Count(stderr.String(), want)
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, want, func() bool { return strings.Count(stderr.String(), want) > n })
	}
	t.Run("SIGHUP", func(t *testing.T) {
		// Limits and the log level apply; a key that needs a restart is named.
		hup(t, base+"log:\n  level: debug\nlimits:\n  max_connections_per_tenant: 1\ncache:\n  ttl: 1m\n", `msg="config reloaded"`)
		if !strings.Contains(stderr.String(), `applied=log.level,limits`) ||
			!strings.Contains(stderr.String(), `only take effect after a restart" keys=cache.ttl`) {
			t.Fatalf("reload log:\n%s", stderr.String())
		}
		first, err := connect(t, "gamma")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := connect(t, "gamma"); sqlState(err) != "53300" {
			t.Fatalf("second connection over the reloaded per-tenant limit: %v", err)
		}
		first.Close(ctx)

		// A bad file changes nothing: still at debug level.
		hup(t, base+"log:\n  level: loud\n", `msg="config reload failed; keeping the running configuration"`)
		probe, err := net.Dial("tcp", routerAddr)
		if err != nil {
			t.Fatal(err)
		}
		probe.Close()
		waitFor(t, "a debug line after the failed reload", func() bool {
			s := stderr.String()
			return strings.Contains(s[strings.LastIndex(s, "config reload failed"):], "level=DEBUG")
		})
	})

	t.Run("readyz while draining", func(t *testing.T) {
		conn, err := connect(t, "delta")
		if err != nil {
			t.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		waitFor(t, "readyz 503", func() bool {
			status, body := httpGet(t, api+"/readyz")
			return status == 503 && strings.Contains(body, "draining")
		})
		if status, _ := httpGet(t, api+"/healthz"); status != 200 {
			t.Errorf("healthz while draining: %d", status)
		}
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("session while draining: %v", err)
		}
		conn.Close(ctx)
		if err := <-stopped; err != nil {
			t.Fatalf("serve: %v\n%s", err, stderr.String())
		}
		if strings.Contains(stderr.String(), testAdminToken) || strings.Contains(stderr.String(), "serve-secret") {
			t.Error("a secret reached the log")
		}
	})
}

func TestDevAdmin(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	taken := busy.Addr().String()
	if _, err := devAdminAddr(taken, true); err == nil {
		t.Fatal("an explicit busy address was accepted")
	}
	addr, err := devAdminAddr(taken, false)
	if err != nil || addr == taken || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("fallback for a busy default: %q, %v", addr, err)
	}
	if addr, err := devAdminAddr("", false); addr != "" || err != nil {
		t.Fatalf("off: %q, %v", addr, err)
	}

	t.Setenv(router.EnvAdminToken, "")
	path := t.TempDir() + "/admin.token"
	tok, err := devAdminToken(path)
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	if again, _ := devAdminToken(path); again != tok {
		t.Fatal("the token changed across restarts")
	}
	t.Setenv(router.EnvAdminToken, "from-env")
	if got, _ := devAdminToken(path); got != "from-env" {
		t.Fatalf("environment ignored: %q", got)
	}
}
