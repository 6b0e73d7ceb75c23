package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	adminapi "github.com/pgtenant/pgtenant/admin"
)

// pools --admin prints GET /v1/pools as two tables, pools and upstream
// budgets, sending the token.
func TestPoolsCommand(t *testing.T) {
	list := adminapi.PoolList{
		Mode: "transaction",
		Pools: []adminapi.Pool{{Tenant: "acme", Server: "db1:5432", Database: "t_acme", User: "t_acme",
			ClientsActive: 2, ClientsWaiting: 3, ServersActive: 2, ServersIdle: 1, Waits: 4, WaitTotalMS: 10, MaxWaitMS: 6.25}},
		Servers: []adminapi.PoolServer{{Server: "db1:5432", Max: 80, Open: 3, Active: 2, Idle: 1, Waiting: 3, WaitingTenants: 1, Tenants: 1, Pools: 1}},
	}
	var auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth = r.Header.Get("Authorization")
		if r.URL.Path != "/v1/pools" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(list)
	}))
	defer srv.Close()

	var out strings.Builder
	if err := run(context.Background(), []string{"pools", "--admin", srv.URL, "--token", "tok"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer tok" {
		t.Errorf("Authorization %q", auth)
	}
	got := out.String()
	if !strings.HasPrefix(got, "mode: transaction (") {
		t.Errorf("no mode line first:\n%s", got)
	}
	for _, want := range []string{
		"TENANT  DATABASE  USER    SERVER    CL_ACTIVE  CL_WAITING  SV_ACTIVE  SV_IDLE  SV_OPENING  WAITS  AVG_WAIT  MAX_WAIT",
		"acme    t_acme    t_acme  db1:5432  2          3           2          1        0           4      2.5ms     6.3ms",
		"SERVER    MAX  OPEN  ACTIVE  IDLE  OPENING  WAITING  WAITING_TENANTS  TENANTS  POOLS",
		"db1:5432  80   3     2       1     0        3        1                1        1",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("no line %q in:\n%s", want, got)
		}
	}

	list = adminapi.PoolList{Mode: "off", Pools: []adminapi.Pool{}, Servers: []adminapi.PoolServer{}}
	out.Reset()
	if err := run(context.Background(), []string{"pools", "--admin", srv.URL, "--token", "tok"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "pooling is off on this router") {
		t.Errorf("off: %q", out.String())
	}

	if err := run(context.Background(), []string{"pools"}, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("pools without --admin = %v, want a usage error", err)
	}
}

// dev refuses an unknown --pool-mode before it starts anything.
func TestDevPoolModeFlag(t *testing.T) {
	err := run(context.Background(), []string{"dev", "--pool-mode", "statement", "--data-dir", t.TempDir()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--pool-mode") {
		t.Fatalf("dev --pool-mode statement = %v", err)
	}
}
