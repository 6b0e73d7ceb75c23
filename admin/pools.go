package admin

import (
	"net/http"
	"time"
)

// PoolList is the answer of GET /v1/pools: this router's pooling. With
// pooling off, Mode is "off" and both lists are empty.
type PoolList struct {
	// Mode is the pool mode of clients that choose none: off, session or
	// transaction.
	Mode    string       `json:"mode"`
	Pools   []Pool       `json:"pools"`
	Servers []PoolServer `json:"servers"`
}

// Pool is one pool (a route: tenant, upstream server, database, user), as
// PgBouncer's SHOW POOLS shows it.
type Pool struct {
	Tenant   string `json:"tenant"`
	Server   string `json:"server"` // host:port
	Database string `json:"database"`
	User     string `json:"user"`
	// ClientsActive hold a server connection (or are logging one in);
	// ClientsWaiting are queued for one.
	ClientsActive  int `json:"clients_active"`
	ClientsWaiting int `json:"clients_waiting"`
	// ServersActive are lent to clients, ServersIdle kept for reuse,
	// ServersOpening being logged in.
	ServersActive  int `json:"servers_active"`
	ServersIdle    int `json:"servers_idle"`
	ServersOpening int `json:"servers_opening"`
	// Waits is how many clients queued and were served, WaitTotalMS their
	// summed wait and MaxWaitMS the longest, since the pool was created.
	Waits       int64   `json:"waits"`
	WaitTotalMS float64 `json:"wait_total_ms"`
	MaxWaitMS   float64 `json:"max_wait_ms"`
}

// PoolServer is one upstream server's budget (pool.max_server_connections),
// shared by every tenant on it.
type PoolServer struct {
	Server string `json:"server"` // host:port
	// Max is the budget; Open the server connections open or being opened:
	// Active lent, Idle kept, Opening being logged in.
	Max     int `json:"max"`
	Open    int `json:"open"`
	Active  int `json:"active"`
	Idle    int `json:"idle"`
	Opening int `json:"opening"`
	// Waiting is the clients queued, WaitingTenants the tenants they
	// belong to.
	Waiting        int `json:"waiting"`
	WaitingTenants int `json:"waiting_tenants"`
	// Tenants and Pools are those with a pool on the server.
	Tenants int `json:"tenants"`
	Pools   int `json:"pools"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pools answers GET /v1/pools; 200 with an empty list when pooling is off,
// so a dashboard need not know the router's configuration.
func (h *Handler) pools(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, r, http.MethodGet)
		return
	}
	out := PoolList{Mode: "off", Pools: []Pool{}, Servers: []PoolServer{}}
	if p := h.cfg.Pools; p != nil {
		if h.cfg.PoolMode != "" {
			out.Mode = h.cfg.PoolMode
		}
		for _, s := range p.Pools() {
			out.Pools = append(out.Pools, Pool{
				Tenant: s.Key.Tenant, Server: s.Key.Server, Database: s.Key.Database, User: s.Key.User,
				ClientsActive: s.ClientsActive, ClientsWaiting: s.ClientsWaiting,
				ServersActive: s.ServersActive, ServersIdle: s.ServersIdle, ServersOpening: s.ServersOpening,
				Waits: s.Waits, WaitTotalMS: ms(s.WaitTotal), MaxWaitMS: ms(s.MaxWait),
			})
		}
		for _, s := range p.Servers() {
			out.Servers = append(out.Servers, PoolServer{
				Server: s.Server, Max: s.Max, Open: s.Open, Active: s.Active, Idle: s.Idle, Opening: s.Opening,
				Waiting: s.Waiting, WaitingTenants: s.WaitingTenants, Tenants: s.Tenants, Pools: s.Pools,
			})
		}
	}
	writeJSON(w, http.StatusOK, out)
}
