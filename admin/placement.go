package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
)

// ErrInvalid wraps what Placements and Routes refuse because of the
// request itself (an unknown provider, a DSN that does not parse): 400.
var ErrInvalid = errors.New("invalid request")

// ErrNoProvider wraps what Routes refuses because this router has no
// provider to take it (no static provider configured): 409.
var ErrNoProvider = errors.New("provider not configured")

// Placements is the per-tenant choice of provider: stored in the catalog
// for every router instance. Place refuses a provider not configured here
// (ErrInvalid) and a tenant that already exists on another provider
// (catalog.ErrOtherProvider). Placement returns "" and false when the
// tenant has none (the default provider creates it). The router package
// implements it.
type Placements interface {
	Place(ctx context.Context, tenant, provider string) error
	Placement(ctx context.Context, tenant string) (provider string, ok bool, err error)
	Unplace(ctx context.Context, tenant string) (bool, error)
	// Default is the default provider's name (provider.kind).
	Default() string
}

// RouteSpec is the body of PUT /v1/tenants/{id}/route: a DSN, or its
// parts. It holds a password: never log it.
type RouteSpec struct {
	DSN      string `json:"dsn,omitempty"`
	Host     string `json:"host,omitempty"`
	Port     uint16 `json:"port,omitempty"`     // 0: 5432
	Database string `json:"database,omitempty"` // "": the user's name
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	SSLMode  string `json:"sslmode,omitempty"` // disable, require, verify-full; "": disable to loopback, require elsewhere
}

// Routes registers routes to databases that already exist (the static
// provider's), stored in the catalog with the password encrypted, and
// drops this router's cached route. SetRoute refuses a spec that does not
// parse (ErrInvalid), a router without the static provider
// (ErrNoProvider), and a tenant that exists on, or is placed on, another
// provider (catalog.ErrOtherProvider). DeleteRoute returns an error
// wrapping provision.ErrTenantNotFound when there is no registered route.
// The router package implements it.
type Routes interface {
	SetRoute(ctx context.Context, tenant string, spec RouteSpec) (provision.Endpoint, error)
	DeleteRoute(ctx context.Context, tenant string) error
}

// PlacementResult is the answer of /v1/tenants/{id}/placement.
type PlacementResult struct {
	Tenant   string `json:"tenant"`
	Provider string `json:"provider"`          // the placed provider, or the default one
	Placed   bool   `json:"placed"`            // false: no placement, the default provider applies
	Deleted  *bool  `json:"deleted,omitempty"` // DELETE: whether there was a placement
}

// placementStatus maps Place's errors to a status.
func placementStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, catalog.ErrOtherProvider), errors.Is(err, ErrNoProvider):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// tenantPlacement serves GET, PUT {"provider": "rds"} and DELETE
// /v1/tenants/{id}/placement: which provider creates the tenant. A
// placement is taken before the tenant's first connect; once the tenant
// exists on another provider it is refused with 409.
func (h *Handler) tenantPlacement(w http.ResponseWriter, r *http.Request) {
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	if h.cfg.Placements == nil {
		writeError(w, http.StatusNotImplemented, "this router has no per-tenant placement")
		return
	}
	ctx := r.Context()
	pl := h.cfg.Placements
	switch r.Method {
	case http.MethodGet:
	case http.MethodPut:
		var body struct {
			Provider string `json:"provider"`
		}
		if err := decodeJSON(w, r, 4096, &body); err != nil || body.Provider == "" {
			writeError(w, http.StatusBadRequest, `want a JSON body {"provider": "<name>"} naming provider.kind or one of provider.also`)
			return
		}
		if err := pl.Place(ctx, id, body.Provider); err != nil {
			status := placementStatus(err)
			h.log.Warn("admin: place tenant refused", "tenant", id, "provider", body.Provider, "err", err)
			writeError(w, status, fmt.Sprintf("place tenant %q on %s: %v", id, truncate(body.Provider, 32), err))
			return
		}
		h.log.Info("admin: tenant placed", "tenant", id, "remote", r.RemoteAddr, "provider", body.Provider)
	case http.MethodDelete:
		had, err := pl.Unplace(ctx, id)
		if err != nil {
			h.internalError(w, "remove placement", err)
			return
		}
		h.log.Info("admin: tenant placement removed", "tenant", id, "remote", r.RemoteAddr, "had_one", had)
		writeJSON(w, http.StatusOK, PlacementResult{Tenant: id, Provider: pl.Default(), Deleted: &had})
		return
	default:
		methodNotAllowed(w, r, "GET, PUT, DELETE")
		return
	}
	p, ok, err := pl.Placement(ctx, id)
	if err != nil {
		h.internalError(w, "read placement", err)
		return
	}
	if !ok {
		p = pl.Default()
	}
	writeJSON(w, http.StatusOK, PlacementResult{Tenant: id, Provider: p, Placed: ok})
}

// tenantRoute serves PUT /v1/tenants/{id}/route (a RouteSpec) and DELETE:
// the tenant's registered route to a database that already exists (the
// static provider's). The password is never echoed or logged.
func (h *Handler) tenantRoute(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodDelete {
		methodNotAllowed(w, r, "PUT, DELETE")
		return
	}
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	if h.cfg.Routes == nil {
		writeError(w, http.StatusNotImplemented, "this router has no registered routes")
		return
	}
	ctx := r.Context()
	log := h.log.With("tenant", id, "remote", r.RemoteAddr)
	if r.Method == http.MethodDelete {
		closed := h.cfg.Router.CloseSessions(id, proxy.CodeAdminShutdown, fmt.Sprintf("terminating connection: the route of tenant %q was removed", id))
		err := h.cfg.Routes.DeleteRoute(ctx, id)
		switch {
		case errors.Is(err, provision.ErrTenantNotFound):
			writeError(w, http.StatusNotFound, fmt.Sprintf("tenant %q has no registered route", id))
			return
		case err != nil:
			h.internalError(w, "delete route", err)
			return
		}
		log.Info("admin: route deleted", "sessions_closed", closed)
		yes := true
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, Deleted: &yes, SessionsClosed: &closed})
		return
	}
	var spec RouteSpec
	if err := decodeJSON(w, r, 16<<10, &spec); err != nil {
		writeError(w, http.StatusBadRequest, `want a JSON body {"dsn": "postgres://user:password@host:port/db?sslmode=verify-full"} or {"host", "port", "database", "user", "password", "sslmode"}`)
		return
	}
	ep, err := h.cfg.Routes.SetRoute(ctx, id, spec)
	if err != nil {
		log.Warn("admin: set route refused", "err", err)
		writeError(w, placementStatus(err), fmt.Sprintf("route of tenant %q: %v", id, err))
		return
	}
	log.Info("admin: route set", "endpoint", ep)
	writeJSON(w, http.StatusOK, ActionResult{Tenant: id, Route: routeOf(ep)})
}
