package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/proxy"
	"github.com/pgtenant/pgtenant/resolver"
)

// Pinger checks that the catalog database answers (for /readyz).
// *pgxpool.Pool implements it.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Catalog is the tenant catalog as the admin API reads and deletes it.
// *catalog.Catalog implements it.
type Catalog interface {
	List(ctx context.Context, after string, limit int) ([]catalog.Entry, error)
	Lookup(ctx context.Context, tenant string) (ep provision.Endpoint, ok bool, err error)
	Delete(ctx context.Context, tenant string) error
}

// Blocks is the block list: stored where every router instance reads it,
// applied by this one. Block and Unblock store the change and apply it on
// this router before they return (a blocked tenant's live sessions here are
// being ended). The router package's block list implements it; the list's
// rule (what is blocked, and where that comes from) is its, not the API's.
type Blocks interface {
	Block(ctx context.Context, tenant string) error
	Unblock(ctx context.Context, tenant string) error
}

// PoolModes is the per-tenant pool modes: stored where every router
// instance reads them, applied by this one. SetPoolMode stores tenant's
// mode (session, transaction or off; "" clears it, so the router's default
// applies) and applies it on this router before it returns; sessions
// already running keep their mode. PoolMode is the mode this router
// applies to tenant, "" for none. The router package implements it.
type PoolModes interface {
	SetPoolMode(ctx context.Context, tenant, mode string) error
	PoolMode(tenant string) string
}

// Credentials is the tenants' own secrets (auth.per_tenant): stored where
// every router instance reads them, applied by this one before the calls
// return. SetCredential stores tenant's SCRAM verifier, checking it
// (proxy.ParseTenantVerifier); DeleteCredential removes it, reporting
// whether there was one; HasSecret reports whether this router lets tenant
// in with a secret of its own. The router package implements it.
type Credentials interface {
	SetCredential(ctx context.Context, tenant, verifier string) error
	DeleteCredential(ctx context.Context, tenant string) (bool, error)
	HasSecret(tenant string) bool
}

// Resolver is this router's route cache. *resolver.Resolver implements it.
type Resolver interface {
	Resolve(ctx context.Context, tenant string) (resolver.Route, error)
	// Ensure is Resolve that may create the tenant whatever tenant.create
	// lets clients do (unless it is off): warm's path.
	Ensure(ctx context.Context, tenant string) (resolver.Route, error)
	Invalidate(tenant string)
	Cached(tenant string) bool
}

// Router is this router's proxy. *proxy.Server implements it.
type Router interface {
	Sessions(tenant string) []proxy.SessionInfo
	CloseSessions(tenant, code, msg string) int
	Draining() bool
	// Blocked is the block list this router applies.
	Blocked() []string
}

// Pools is this router's connection pooling, as GET /v1/pools shows it.
// *pool.Manager implements it.
type Pools interface {
	Pools() []pool.PoolStats
	Servers() []pool.ServerStats
}

// Creations is the record of background creations (providers whose
// Create takes minutes, provision.Estimator), shared by every router
// instance. *catalog.Catalog implements it.
type Creations interface {
	Creation(ctx context.Context, tenant string) (provision.Creation, bool, error)
}

// Deprovisioner deletes tenants' databases. provision.Provider implements it.
type Deprovisioner interface {
	Name() string
	Delete(ctx context.Context, tenant string) error
}

// Config configures a Handler. Catalog, Blocks, Ping, Resolver and Router
// are required.
type Config struct {
	// Token is the bearer token of the /v1 API. Empty turns the API off
	// (every /v1 request gets 401). It is never logged.
	Token string
	// Gatherer is what /metrics exposes. Nil: /metrics answers 404.
	Gatherer prometheus.Gatherer
	// Catalog, Blocks and Ping are the shared catalog.
	Catalog Catalog
	Blocks  Blocks
	Ping    Pinger
	// TenantModes is the shared per-tenant pool modes. Nil: PUT and DELETE
	// /v1/tenants/{id}/pool-mode answer 501.
	TenantModes PoolModes
	// Credentials is the tenants' own secrets. Nil: PUT and DELETE
	// /v1/tenants/{id}/password answer 501.
	Credentials Credentials
	// Resolver and Router are this router instance's.
	Resolver Resolver
	Router   Router
	// Provider deletes tenants' databases. Nil: DELETE answers 501.
	// If it implements provision.Estimator, GET /v1/tenants/{id} and warm
	// say how long a creation in progress should still take.
	Provider Deprovisioner
	// Providers, when not nil, are every configured provider by name
	// (Provider too): DELETE goes to the provider the catalog records
	// for the tenant, and refuses one not configured here.
	Providers map[string]Deprovisioner
	// Placements is the per-tenant choice of provider (placement.go).
	// Nil: /v1/tenants/{id}/placement answers 501.
	Placements Placements
	// Routes registers routes to existing databases (placement.go). Nil:
	// /v1/tenants/{id}/route answers 501.
	Routes Routes
	// Creations is the shared record of background creations, shown by
	// GET /v1/tenants/{id}. Nil: not shown.
	Creations Creations
	// Tenant is the proxy's tenant rule, so that the API takes exactly the
	// IDs clients can connect as. The zero value is the proxy's default.
	Tenant proxy.TenantConfig
	// Migrations runs schema migrations (POST and GET /v1/migrations).
	// Nil: those answer 501.
	Migrations Migrations
	// Pools is the proxy's pool Manager (GET /v1/pools). Nil: pooling is
	// off, and /v1/pools says so.
	Pools Pools
	// PoolMode is the pool mode of clients that choose none: off, session
	// or transaction (off with Pools set: only clients that ask for a mode
	// are pooled). Empty means off.
	PoolMode string
	// ReadyTimeout bounds the catalog ping of /readyz. Zero or negative
	// means 2s.
	ReadyTimeout time.Duration
	// Log receives a line per admin action and readiness changes. Nil
	// discards.
	Log *slog.Logger
}

func (c *Config) readyTimeout() time.Duration {
	if c.ReadyTimeout <= 0 {
		return 2 * time.Second
	}
	return c.ReadyTimeout
}

// Handler serves the admin endpoints (see the package doc). It is safe for
// concurrent use.
type Handler struct {
	cfg       Config
	log       *slog.Logger
	tokenHash *[sha256.Size]byte // nil: the /v1 API is off
	mux       *http.ServeMux
	notReady  atomic.Pointer[string] // last readiness failure reported, for logging changes only
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Catalog == nil || cfg.Blocks == nil || cfg.Ping == nil || cfg.Resolver == nil || cfg.Router == nil {
		return nil, errors.New("admin: Catalog, Blocks, Ping, Resolver and Router are required")
	}
	h := &Handler{cfg: cfg, log: cfg.Log, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Token != "" {
		sum := sha256.Sum256([]byte(cfg.Token))
		h.tokenHash = &sum
	}
	if cfg.Gatherer != nil {
		h.mux.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	h.mux.HandleFunc("/healthz", h.healthz)
	h.mux.HandleFunc("/readyz", h.readyz)
	api := http.NewServeMux()
	api.HandleFunc("/v1/tenants", h.tenants)
	api.HandleFunc("/v1/tenants/{id}", h.tenant)
	api.HandleFunc("/v1/tenants/{id}/pool-mode", h.tenantPoolMode)
	api.HandleFunc("/v1/tenants/{id}/password", h.tenantPassword)   // credentials.go
	api.HandleFunc("/v1/tenants/{id}/placement", h.tenantPlacement) // placement.go
	api.HandleFunc("/v1/tenants/{id}/route", h.tenantRoute)         // placement.go
	api.HandleFunc("/v1/tenants/{id}/{action}", h.tenantAction)
	api.HandleFunc("/v1/pools", h.pools)           // pools.go
	api.HandleFunc("/v1/migrations", h.migrations) // migrations.go
	api.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	h.mux.Handle("/v1/", h.authorize(api))
	// Profiles (issue: profile before optimising), behind the same token:
	// they reveal code paths and can cost CPU.
	prof := http.NewServeMux()
	prof.HandleFunc("/debug/pprof/", pprof.Index)
	prof.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
	prof.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
	h.mux.Handle("/debug/pprof/", h.authorize(prof))
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path+" (see /metrics, /healthz, /readyz, /v1/tenants, /v1/pools)")
	})
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is 503 while the proxy drains or the catalog does not answer a
// ping within ReadyTimeout. Failures are logged when readiness changes,
// not on every probe.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	reason := ""
	var cause error
	if h.cfg.Router.Draining() {
		reason = "draining"
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.readyTimeout())
		cause = h.cfg.Ping.Ping(ctx)
		cancel()
		if cause != nil {
			reason = "catalog unreachable"
		}
	}
	if reason == "" {
		if h.notReady.Swap(nil) != nil {
			h.log.Info("ready again")
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	if prev := h.notReady.Swap(&reason); prev == nil || *prev != reason {
		if cause != nil {
			h.log.Warn("not ready", "reason", reason, "err", cause)
		} else {
			h.log.Info("not ready", "reason", reason)
		}
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": reason})
}

// authorize lets requests through that carry the bearer token. The token
// is compared in constant time (as hashes, so its length does not leak
// either).
func (h *Handler) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.tokenHash == nil {
			writeError(w, http.StatusUnauthorized, "the admin API is off: no admin token is configured (admin.token, PGTENANT_ADMIN_TOKEN)")
			return
		}
		auth := r.Header.Get("Authorization")
		scheme, token, ok := strings.Cut(auth, " ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], h.tokenHash[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgtenant"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token (Authorization: Bearer <admin token>)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// decodeJSON reads r's body, at most limit bytes, into v, refusing fields
// v does not have.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

var _ Router = (*proxy.Server)(nil)
