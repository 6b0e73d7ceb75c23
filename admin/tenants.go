package admin

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// Limits of GET /v1/tenants.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// Tenant is a catalog row as the API shows it: no password.
type Tenant struct {
	Tenant     string    `json:"tenant"`
	Provider   string    `json:"provider"`
	ProviderID string    `json:"provider_id"`
	Host       string    `json:"host"`
	Port       uint16    `json:"port"`
	Database   string    `json:"database"`
	User       string    `json:"user"`
	State      string    `json:"state"`
	Blocked    bool      `json:"blocked"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// TenantList is the answer of GET /v1/tenants. Next, when not empty, is the
// after= of the next page.
type TenantList struct {
	Tenants []Tenant `json:"tenants"`
	Next    string   `json:"next,omitempty"`
}

// Route is a tenant's upstream without its password.
type Route struct {
	Host       string `json:"host"`
	Port       uint16 `json:"port"`
	Database   string `json:"database"`
	User       string `json:"user"`
	ProviderID string `json:"provider_id"`
	Provider   string `json:"provider,omitempty"` // the provider that holds it
	TLS        string `json:"tls,omitempty"`      // the route's own upstream TLS mode (a static route's sslmode)
}

func routeOf(ep provision.Endpoint) *Route {
	return &Route{Host: ep.Host, Port: ep.Port, Database: ep.Database, User: ep.User, ProviderID: ep.ProviderID,
		Provider: ep.Provider, TLS: ep.TLS}
}

// Session is a live routed session on this router.
type Session struct {
	Remote      string    `json:"remote"`
	Start       time.Time `json:"start"`
	Via         string    `json:"via"`
	UpstreamPID uint32    `json:"upstream_pid"`
	BytesIn     int64     `json:"bytes_in"`
	BytesOut    int64     `json:"bytes_out"`
}

// TenantStatus is the answer of GET /v1/tenants/{id}.
type TenantStatus struct {
	Tenant    string `json:"tenant"`
	InCatalog bool   `json:"in_catalog"`
	Route     *Route `json:"route,omitempty"`
	Blocked   bool   `json:"blocked"`
	// PoolMode is the tenant's own pool mode (session, transaction or
	// off) as this router applies it; absent when the router's default
	// applies.
	PoolMode string `json:"pool_mode,omitempty"`
	// OwnSecret says whether the tenant has a secret of its own
	// (auth.per_tenant) on this router.
	OwnSecret bool      `json:"own_secret"`
	Cached    bool      `json:"cached"`
	Sessions  []Session `json:"sessions"`
	// Creation is the tenant's background creation (slow providers),
	// running or failed; absent when there is none.
	Creation *Creation `json:"creation,omitempty"`
}

// Creation is a background creation as the API shows it.
type Creation struct {
	State    string    `json:"state"` // running or failed
	Provider string    `json:"provider"`
	Started  time.Time `json:"started_at"`
	// RemainingSeconds is the provider's estimate minus the time elapsed
	// (running, with a provider that gives estimates).
	RemainingSeconds *float64  `json:"remaining_seconds,omitempty"`
	Failed           time.Time `json:"failed_at,omitzero"`
	Error            string    `json:"error,omitempty"` // failed: why
}

// ActionResult is the answer of the POST and DELETE endpoints; fields that
// do not apply to the action are left out.
type ActionResult struct {
	Tenant  string  `json:"tenant"`
	Via     string  `json:"via,omitempty"`     // warm: cache, catalog or created
	Route   *Route  `json:"route,omitempty"`   // warm
	Seconds float64 `json:"seconds,omitempty"` // warm: how long the resolve took
	// State is warm's outcome: ready (200), or creating (202: a slow
	// provider creates it in the background; poll GET /v1/tenants/{id}).
	State            string     `json:"state,omitempty"`
	Started          *time.Time `json:"started_at,omitempty"`        // warm, creating: since when
	RemainingSeconds *float64   `json:"remaining_seconds,omitempty"` // warm, creating: the provider's estimate of what is left
	Evicted          *bool      `json:"evicted,omitempty"`           // evict: whether a route was cached
	Blocked          *bool      `json:"blocked,omitempty"`           // block, unblock
	PoolMode         *string    `json:"pool_mode,omitempty"`         // pool-mode: the tenant's mode, "" for the router's default
	OwnSecret        *bool      `json:"own_secret,omitempty"`        // password: whether the tenant has its own secret now
	Deleted          *bool      `json:"deleted,omitempty"`           // password DELETE: whether there was one
	SessionsClosed   *int       `json:"sessions_closed,omitempty"`
	Provider         string     `json:"provider,omitempty"` // delete: "deleted" or "not found"
	Catalog          string     `json:"catalog,omitempty"`  // delete: "deleted" or "not found"
}

// tenantID returns the validated {id} of r, or writes a 400 and returns "".
func (h *Handler) tenantID(w http.ResponseWriter, r *http.Request) string {
	id := r.PathValue("id")
	if !h.cfg.Tenant.Valid(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid tenant ID %q: want %s", truncate(id, 64), h.cfg.Tenant.Rule()))
		return ""
	}
	return id
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, r.Method+" "+r.URL.Path+": allowed: "+allow)
}

// tenants serves GET /v1/tenants?after=&limit=.
func (h *Handler) tenants(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, r, http.MethodGet)
		return
	}
	q := r.URL.Query()
	after := q.Get("after")
	if len(after) > 256 {
		writeError(w, http.StatusBadRequest, "after: too long")
		return
	}
	limit := defaultListLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxListLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: want 1..%d, not %q", maxListLimit, truncate(s, 16)))
			return
		}
		limit = n
	}
	entries, err := h.cfg.Catalog.List(r.Context(), after, limit)
	if err != nil {
		h.internalError(w, "list tenants", err)
		return
	}
	blocked := setOf(h.cfg.Router.Blocked())
	out := TenantList{Tenants: make([]Tenant, 0, len(entries))}
	for _, e := range entries {
		out.Tenants = append(out.Tenants, Tenant{
			Tenant: e.Tenant, Provider: e.Provider, ProviderID: e.ProviderID, Host: e.Host, Port: e.Port,
			Database: e.Database, User: e.User, State: e.State, Blocked: blocked[e.Tenant],
			CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt,
		})
	}
	if len(entries) == limit {
		out.Next = entries[len(entries)-1].Tenant
	}
	writeJSON(w, http.StatusOK, out)
}

// tenant serves GET and DELETE /v1/tenants/{id}.
func (h *Handler) tenant(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodDelete:
		h.deleteTenant(w, r)
		return
	default:
		methodNotAllowed(w, r, "GET, DELETE")
		return
	}
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	ep, ok, err := h.cfg.Catalog.Lookup(r.Context(), id)
	if err != nil {
		h.internalError(w, "look up tenant", err)
		return
	}
	st := TenantStatus{
		Tenant:    id,
		InCatalog: ok,
		Blocked:   slices.Contains(h.cfg.Router.Blocked(), id),
		Cached:    h.cfg.Resolver.Cached(id),
		Sessions:  []Session{},
	}
	if ok {
		st.Route = routeOf(ep)
	}
	if h.cfg.TenantModes != nil {
		st.PoolMode = h.cfg.TenantModes.PoolMode(id)
	}
	if h.cfg.Credentials != nil {
		st.OwnSecret = h.cfg.Credentials.HasSecret(id)
	}
	for _, s := range h.cfg.Router.Sessions(id) {
		st.Sessions = append(st.Sessions, Session{
			Remote: s.Remote, Start: s.Start, Via: s.Via.String(), UpstreamPID: s.UpstreamPID,
			BytesIn: s.BytesIn, BytesOut: s.BytesOut,
		})
	}
	if h.cfg.Creations != nil && !ok {
		cr, found, err := h.cfg.Creations.Creation(r.Context(), id)
		if err != nil {
			h.internalError(w, "look up the tenant's creation", err)
			return
		}
		if found {
			st.Creation = h.creation(cr)
		} else if ep, ok, err = h.cfg.Catalog.Lookup(r.Context(), id); err != nil {
			// A creation that finished between the two reads left the
			// creations table after its route reached the catalog: look
			// again, or the answer says neither (warm would start over).
			h.internalError(w, "look up tenant", err)
			return
		} else if ok {
			st.InCatalog, st.Route = true, routeOf(ep)
		}
	}
	if !st.InCatalog && !st.Blocked && st.PoolMode == "" && !st.OwnSecret && !st.Cached && len(st.Sessions) == 0 && st.Creation == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("tenant %q not found", id))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// tenantAction serves POST /v1/tenants/{id}/{warm,evict,block,unblock}.
func (h *Handler) tenantAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	switch action {
	case "warm", "evict", "block", "unblock":
	default:
		writeError(w, http.StatusNotFound, "no such action: "+truncate(action, 32)+" (warm, evict, block, unblock)")
		return
	}
	if r.Method != http.MethodPost {
		methodNotAllowed(w, r, http.MethodPost)
		return
	}
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	log := h.log.With("tenant", id, "remote", r.RemoteAddr)
	ctx := r.Context()
	switch action {
	case "warm":
		if slices.Contains(h.cfg.Router.Blocked(), id) {
			writeError(w, http.StatusConflict, fmt.Sprintf("tenant %q is blocked: unblock it first", id))
			return
		}
		start := time.Now()
		rt, err := h.cfg.Resolver.Ensure(ctx, id) // creates it, unless tenant.create is off
		var creating *resolver.CreatingError
		if errors.As(err, &creating) { // a slow provider: it goes on in the background
			left := creating.Remaining(time.Now()).Seconds()
			log.Info("admin: tenant being created", "started", creating.Started, "remaining", creating.Remaining(time.Now()))
			writeJSON(w, http.StatusAccepted, ActionResult{Tenant: id, State: "creating", Started: &creating.Started,
				RemainingSeconds: &left, Seconds: time.Since(start).Seconds()})
			return
		}
		if err != nil {
			status := http.StatusServiceUnavailable
			var limit *provision.LimitError
			switch {
			case errors.Is(err, resolver.ErrCreateOff):
				status = http.StatusForbidden
			case errors.As(err, &limit) && limit.Setting == provision.LimitCreatesPerMinute:
				status = http.StatusTooManyRequests
				w.Header().Set("Retry-After", strconv.Itoa(limit.RetrySeconds()))
			case errors.As(err, &limit):
				status = http.StatusConflict
			case errors.Is(err, resolver.ErrUnknownTenant):
				status = http.StatusNotFound
			}
			log.Warn("admin: warm failed", "err", err)
			writeError(w, status, fmt.Sprintf("warm tenant %q: %v", id, err))
			return
		}
		took := time.Since(start)
		log.Info("admin: tenant warmed", "via", rt.Via.String(), "took", took)
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, State: "ready", Via: rt.Via.String(), Route: routeOf(rt.Endpoint), Seconds: took.Seconds()})

	case "evict":
		was := h.cfg.Resolver.Cached(id)
		h.cfg.Resolver.Invalidate(id)
		log.Info("admin: route evicted", "was_cached", was)
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, Evicted: &was})

	case "block":
		// Count first: the sessions the block ends leave the registry at once.
		closed := len(h.cfg.Router.Sessions(id))
		if err := h.cfg.Blocks.Block(ctx, id); err != nil {
			h.internalError(w, "block tenant", err)
			return
		}
		log.Info("admin: tenant blocked", "sessions_closed", closed)
		yes := true
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, Blocked: &yes, SessionsClosed: &closed})

	case "unblock":
		if err := h.cfg.Blocks.Unblock(ctx, id); err != nil {
			h.internalError(w, "unblock tenant", err)
			return
		}
		if slices.Contains(h.cfg.Router.Blocked(), id) {
			writeError(w, http.StatusConflict, fmt.Sprintf("tenant %q is still blocked: this router's configuration blocks it too (blocked_tenants)", id))
			return
		}
		log.Info("admin: tenant unblocked")
		no := false
		writeJSON(w, http.StatusOK, ActionResult{Tenant: id, Blocked: &no})
	}
}

// creation is cr as the API shows it.
func (h *Handler) creation(cr provision.Creation) *Creation {
	c := &Creation{State: cr.State, Provider: cr.Provider, Started: cr.Started, Failed: cr.Finished, Error: cr.Error}
	if est, ok := h.cfg.Provider.(provision.Estimator); ok && cr.State == provision.CreationRunning {
		ce := resolver.CreatingError{Started: cr.Started, Estimate: est.CreateEstimate()}
		left := ce.Remaining(time.Now()).Seconds()
		c.RemainingSeconds = &left
	}
	return c
}

// poolModeBody is the body of PUT /v1/tenants/{id}/pool-mode.
type poolModeBody struct {
	Mode *string `json:"mode"`
}

// tenantPoolMode serves PUT /v1/tenants/{id}/pool-mode {"mode": "session"}
// (session, transaction or off; "" clears) and DELETE (clears): the
// tenant's own pool mode, stored for every router instance and applied on
// this one at once. Sessions already running keep their mode.
func (h *Handler) tenantPoolMode(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodDelete {
		methodNotAllowed(w, r, "PUT, DELETE")
		return
	}
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	mode := ""
	if r.Method == http.MethodPut {
		var body poolModeBody
		if err := decodeJSON(w, r, 4096, &body); err != nil || body.Mode == nil {
			writeError(w, http.StatusBadRequest, `want a JSON body {"mode": "session"|"transaction"|"off"|""}`)
			return
		}
		mode = *body.Mode
		if mode != "" && !catalog.ValidPoolMode(mode) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid pool mode %q: want session, transaction, off or \"\" (the router's default)", truncate(mode, 32)))
			return
		}
	}
	if h.cfg.TenantModes == nil {
		writeError(w, http.StatusNotImplemented, "this router has no per-tenant pool modes")
		return
	}
	if err := h.cfg.TenantModes.SetPoolMode(r.Context(), id, mode); err != nil {
		h.internalError(w, "set pool mode", err)
		return
	}
	h.log.Info("admin: tenant pool mode set", "tenant", id, "remote", r.RemoteAddr, "mode", mode)
	writeJSON(w, http.StatusOK, ActionResult{Tenant: id, PoolMode: &mode})
}

// deleteTenant serves DELETE /v1/tenants/{id}?confirm={id}: it ends the
// tenant's live sessions on this router, deletes its database at the
// provider, then its catalog row (the order of `pgtenant tenants delete`:
// a failure in between leaves a row whose next connect re-creates the
// tenant, never a database nobody knows about). Other routers keep a cached
// route until cache.ttl ends; block the tenant first to keep clients out
// meanwhile.
func (h *Handler) deleteTenant(w http.ResponseWriter, r *http.Request) {
	id := h.tenantID(w, r)
	if id == "" {
		return
	}
	if r.URL.Query().Get("confirm") != id {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("deleting tenant %q destroys its database and data: repeat with ?confirm=%s", id, id))
		return
	}
	if h.cfg.Provider == nil {
		writeError(w, http.StatusNotImplemented, "this router has no provider to delete tenants with")
		return
	}
	ctx := r.Context()
	prov, err := h.recordedProvider(ctx, id) // delete.go
	switch {
	case errors.Is(err, ErrNoProvider):
		writeError(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		h.internalError(w, "look up tenant", err)
		return
	}
	closed := h.cfg.Router.CloseSessions(id, proxy.CodeAdminShutdown, fmt.Sprintf("terminating connection: tenant %q is being deleted", id))
	h.cfg.Resolver.Invalidate(id)
	d, err := DeleteTenant(ctx, prov, h.cfg.Catalog, id)
	h.cfg.Resolver.Invalidate(id) // a fill that ran meanwhile may have cached the old route
	switch {
	case errors.Is(err, provision.ErrTenantNotFound):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case err != nil: // says where it failed: at the provider, or in the catalog
		h.log.Warn("admin: delete tenant failed", "tenant", id, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	res := ActionResult{Tenant: id, Provider: status(d.Provider), Catalog: status(d.Catalog), SessionsClosed: &closed}
	h.log.Info("admin: tenant deleted", "tenant", id, "remote", r.RemoteAddr,
		"provider", res.Provider, "catalog", res.Catalog, "sessions_closed", closed)
	writeJSON(w, http.StatusOK, res)
}

func status(deleted bool) string {
	if !deleted {
		return "not found"
	}
	return "deleted"
}

// internalError answers 500 with what failed. The cause is included: the
// API is authenticated, and the errors of the catalog and providers carry
// no secrets.
func (h *Handler) internalError(w http.ResponseWriter, what string, err error) {
	h.log.Warn("admin: "+what+" failed", "err", err)
	writeError(w, http.StatusInternalServerError, what+": "+err.Error())
}

func setOf(list []string) map[string]bool {
	m := make(map[string]bool, len(list))
	for _, s := range list {
		m[s] = true
	}
	return m
}
