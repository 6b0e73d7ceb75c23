package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
	pgrouter "github.com/pgtenant/pgtenant/router"
)

func (e *env) pools(t *testing.T) admin.PoolList {
	t.Helper()
	var l admin.PoolList
	e.do(t, http.MethodGet, "/v1/pools", http.StatusOK, &l)
	return l
}

// With pooling off, /v1/pools is there, behind the token, and says so.
func TestPoolsOff(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t)
	if body := e.do(t, http.MethodGet, "/v1/pools", http.StatusOK, nil); body != "{\n  \"mode\": \"off\",\n  \"pools\": [],\n  \"servers\": []\n}\n" {
		t.Fatalf("pooling off: %s", body)
	}
	if status, _ := e.call(t, http.MethodGet, "/v1/pools", ""); status != http.StatusUnauthorized {
		t.Fatalf("without the token: %d", status)
	}
	if status, _ := e.call(t, http.MethodPost, "/v1/pools", adminToken); status != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", status)
	}
}

// pool.mode session in the router's configuration: /v1/pools shows the
// tenant's pool and the upstream's budget, while the client holds its
// server connection and after it gave it back.
func TestPoolsSession(t *testing.T) {
	pgtest.CheckGoroutines(t)
	e := startEnv(t, withRouter(func(c *pgrouter.Config) {
		c.Pool.Mode = pgrouter.PoolModeSession
		c.Pool.MaxServerConnections = 7
	}))
	tenant := newTenant("pools")
	conn, err := e.connect(t, tenant)
	if err != nil {
		t.Fatal(err)
	}
	l := e.pools(t)
	server := fmt.Sprintf("%s:%d", e.cluster.Host(), e.cluster.Port())
	if l.Mode != "session" || len(l.Pools) != 1 || len(l.Servers) != 1 {
		t.Fatalf("%+v", l)
	}
	p := l.Pools[0]
	if p.Tenant != tenant || p.Server != server || p.Database == "" || p.User == "" ||
		p.ClientsActive != 1 || p.ClientsWaiting != 0 || p.ServersActive != 1 || p.ServersIdle != 0 {
		t.Fatalf("pool while the client holds its connection: %+v", p)
	}
	if s := l.Servers[0]; s.Server != server || s.Max != 7 || s.Open != 1 || s.Active != 1 || s.Tenants != 1 || s.Pools != 1 {
		t.Fatalf("server budget: %+v", s)
	}
	if err := conn.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the server connection back in the pool", func() bool {
		l := e.pools(t)
		return len(l.Pools) == 1 && l.Pools[0].ServersIdle == 1 && l.Pools[0].ClientsActive == 0 && l.Servers[0].Idle == 1
	})
}

// A Manager set on the proxy's configuration directly (an embedder's) is
// the one /v1/pools reads; transaction mode gives the connection back
// after each transaction.
func TestPoolsTransactionManager(t *testing.T) {
	pgtest.CheckGoroutines(t)
	m := pool.New(pool.Config{})
	t.Cleanup(m.Close) // after the router stopped (cleanups run in reverse)
	e := startEnv(t, withProxy(func(pc *proxy.Config) {
		pc.Pool = proxy.PoolConfig{Mode: proxy.PoolTransaction, Manager: m}
	}))
	tenant := newTenant("pooltx")
	conn, err := e.connect(t, tenant)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := conn.QueryRow(context.Background(), "select 1", pgx.QueryExecModeSimpleProtocol).Scan(&one); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the connection idle between transactions", func() bool {
		l := e.pools(t)
		return l.Mode == "transaction" && len(l.Pools) == 1 && l.Pools[0].Tenant == tenant &&
			l.Pools[0].ServersIdle == 1 && l.Pools[0].ClientsActive == 0
	})
}
