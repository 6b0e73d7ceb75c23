package admin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
)

// Migrations runs the schema migrations of POST and GET /v1/migrations
// (package migrate). The router package implements it.
type Migrations interface {
	// Start checks the migration files and starts an up run as req asks
	// (req.Action is "up"; unset options take the router's migrations.*
	// settings) in the background; it returns as soon as the run has
	// started. It fails with
	// ErrMigrationRunning while a run started on this router is running,
	// and with a *MigrationError when the request or the router's state
	// does not allow a run.
	Start(ctx context.Context, req MigrationRequest) (MigrationRun, error)
	// Last returns the run in progress or, if none, the last one
	// finished; false if none was started since the router started.
	Last() (MigrationRun, bool)
	// Status is where the fleet stands, from the catalog (a
	// *MigrationError when the files do not match the registered ones).
	Status(ctx context.Context) (*migrate.Status, error)
}

// ErrMigrationRunning is Migrations.Start's answer while a run is running
// on this router (409).
var ErrMigrationRunning = errors.New("a migration run is already running on this router")

// MigrationError is a refusal of Migrations.Start or Status: HTTPStatus
// (400 for the request, 409 for the router's state) with a message saying
// what to do.
type MigrationError struct {
	HTTPStatus int
	Msg        string
}

func (e *MigrationError) Error() string { return e.Msg }

// MigrationRequest is the body of POST /v1/migrations. Unset options take
// the router's migrations.* settings.
type MigrationRequest struct {
	Action       string   `json:"action"` // "up" or "status"
	To           int64    `json:"to,omitempty"`
	Concurrency  *int     `json:"concurrency,omitempty"`
	Canary       *int     `json:"canary,omitempty"`
	Tenants      []string `json:"tenants,omitempty"`
	MaxFailShare *float64 `json:"max_fail_share,omitempty"`
	DryRun       bool     `json:"dry_run,omitempty"`
}

// MigrationRun is one up run started through the API.
type MigrationRun struct {
	ID string `json:"id"`
	// State is running, ok (every tenant at the target), failed (some
	// failed or were not reached: POST up again once fixed, it resumes)
	// or error (the run stopped before any database: Error says why).
	State      string     `json:"state"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Request is what was asked, with the defaults filled in.
	Request  MigrationRequest  `json:"request"`
	Progress MigrationProgress `json:"progress"`
	Report   *MigrationReport  `json:"report,omitempty"` // when finished
	Error    string            `json:"error,omitempty"`
}

// MigrationProgress counts the tenants of a run so far.
type MigrationProgress struct {
	Done   int `json:"done"`
	Failed int `json:"failed"`
	Total  int `json:"total"`
}

// MigrationReport is a finished run's migrate.Report.
type MigrationReport struct {
	Target    int64              `json:"target"`
	DryRun    bool               `json:"dry_run"`
	Templates []MigrationResult  `json:"templates"`
	Total     int                `json:"total"`
	Done      int                `json:"done"`
	Applied   int                `json:"applied"`
	NotRun    int                `json:"not_run"`
	Stopped   string             `json:"stopped,omitempty"`
	Failed    []MigrationFailure `json:"failed"`
}

// MigrationResult is what migrating one database did.
type MigrationResult struct {
	From    int64 `json:"from"`
	To      int64 `json:"to"`
	Applied int   `json:"applied"`
}

// MigrationFailure is a database that failed; it stays at Version.
type MigrationFailure struct {
	Kind    string `json:"kind"` // tenant or template
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Error   string `json:"error"`
}

// NewMigrationReport converts a migrate.Report.
func NewMigrationReport(r *migrate.Report) *MigrationReport {
	out := &MigrationReport{Target: r.Target, DryRun: r.DryRun, Total: r.Total, Done: r.Done, Applied: r.Applied,
		NotRun: r.NotRun, Stopped: r.Stopped, Templates: []MigrationResult{}, Failed: []MigrationFailure{}}
	for _, t := range r.Templates {
		out.Templates = append(out.Templates, MigrationResult{From: t.From, To: t.To, Applied: t.Applied})
	}
	for _, f := range r.Failed {
		out.Failed = append(out.Failed, MigrationFailure{Kind: f.Kind, Name: f.Name, Version: f.Version, Error: f.Err.Error()})
	}
	return out
}

// MigrationStatus is the answer of GET /v1/migrations (and POST
// {"action":"status"}): the run started here, if any, and the fleet's state
// from the catalog.
type MigrationStatus struct {
	Run    *MigrationRun `json:"run"` // running or last finished on this router; null: none
	Target int64         `json:"target"`
	// Registered are the registered files; Unregistered the files in
	// migrations.dir that the next up registers.
	Registered   []string         `json:"registered"`
	Unregistered []string         `json:"unregistered"`
	Templates    []MigrationState `json:"templates"`
	Tenants      int              `json:"tenants"`
	// Versions counts tenants per recorded version; Unknown those no
	// runner has looked at since they were created.
	Versions map[int64]int    `json:"versions"`
	Unknown  int              `json:"unknown"`
	Failed   []MigrationState `json:"failed"`
	Running  []MigrationState `json:"running"`
}

// MigrationState is one database's recorded migration state.
type MigrationState struct {
	Name      string    `json:"name"`
	Version   int64     `json:"version"`
	Status    string    `json:"status"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

func states(in []catalog.MigrationState) []MigrationState {
	out := []MigrationState{}
	for _, s := range in {
		out = append(out, MigrationState{Name: s.Name, Version: s.Version, Status: s.Status, Error: s.Error, UpdatedAt: s.UpdatedAt})
	}
	return out
}

// migrations serves GET /v1/migrations (status) and POST /v1/migrations
// {"action": "up"|"status", ...}: up starts a run in the background and
// answers 202 with it; GET shows its progress and, once done, its report.
func (h *Handler) migrations(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		methodNotAllowed(w, r, "GET, POST")
		return
	}
	req := MigrationRequest{Action: "status"}
	if r.Method == http.MethodPost {
		req = MigrationRequest{}
		if err := decodeJSON(w, r, 1<<20, &req); err != nil {
			writeError(w, http.StatusBadRequest, `want a JSON body {"action": "up"|"status", "to": N, "concurrency": K, "canary": N, "tenants": ["a"], "max_fail_share": F, "dry_run": false}: `+err.Error())
			return
		}
		if msg := h.checkMigrationRequest(&req); msg != "" {
			writeError(w, http.StatusBadRequest, msg)
			return
		}
	}
	if h.cfg.Migrations == nil {
		writeError(w, http.StatusNotImplemented, "this router runs no migrations")
		return
	}
	if req.Action == "status" {
		h.migrationStatus(w, r)
		return
	}
	run, err := h.cfg.Migrations.Start(r.Context(), req)
	var me *MigrationError
	switch {
	case errors.Is(err, ErrMigrationRunning):
		msg := err.Error()
		if last, ok := h.cfg.Migrations.Last(); ok {
			msg += fmt.Sprintf(" (run %s, %d of %d tenants done): wait for it (GET /v1/migrations)", last.ID, last.Progress.Done+last.Progress.Failed, last.Progress.Total)
		}
		writeError(w, http.StatusConflict, msg)
		return
	case errors.As(err, &me):
		writeError(w, me.HTTPStatus, me.Msg)
		return
	case err != nil:
		h.internalError(w, "start migration run", err)
		return
	}
	h.log.Info("admin: migration run started", "run", run.ID, "remote", r.RemoteAddr, "to", req.To, "tenants", len(req.Tenants), "dry_run", req.DryRun)
	w.Header().Set("Location", "/v1/migrations")
	writeJSON(w, http.StatusAccepted, run)
}

// checkMigrationRequest returns what is wrong with req, or "".
func (h *Handler) checkMigrationRequest(req *MigrationRequest) string {
	switch {
	case req.Action != "up" && req.Action != "status":
		return fmt.Sprintf(`action: %q: want "up" or "status"`, truncate(req.Action, 32))
	case req.To < 0:
		return fmt.Sprintf("to: %d: want a version (0: the last file's)", req.To)
	case req.Concurrency != nil && *req.Concurrency < 1:
		return fmt.Sprintf("concurrency: %d: want 1 or more", *req.Concurrency)
	case req.Canary != nil && *req.Canary < 0:
		return fmt.Sprintf("canary: %d: want 0 (no canary wave) or more", *req.Canary)
	case req.MaxFailShare != nil && (*req.MaxFailShare < 0 || *req.MaxFailShare > 1):
		return fmt.Sprintf("max_fail_share: %g: want a share from 0 (stop at the first failure) to 1", *req.MaxFailShare)
	}
	for _, t := range req.Tenants {
		if !h.cfg.Tenant.Valid(t) {
			return fmt.Sprintf("tenants: invalid tenant ID %q: want %s", truncate(t, 64), h.cfg.Tenant.Rule())
		}
	}
	if req.Action == "status" && (req.To != 0 || req.Concurrency != nil || req.Canary != nil || len(req.Tenants) > 0 || req.MaxFailShare != nil || req.DryRun) {
		return `action "status" takes no options`
	}
	return ""
}

func (h *Handler) migrationStatus(w http.ResponseWriter, r *http.Request) {
	st, err := h.cfg.Migrations.Status(r.Context())
	var me *MigrationError
	switch {
	case errors.As(err, &me):
		writeError(w, me.HTTPStatus, me.Msg)
		return
	case err != nil:
		h.internalError(w, "migration status", err)
		return
	}
	out := MigrationStatus{Target: st.Target, Registered: []string{}, Unregistered: []string{}, Templates: states(st.Templates),
		Tenants: st.Tenants, Versions: st.Versions, Unknown: st.Unknown, Failed: states(st.Failed), Running: states(st.Running)}
	for _, m := range st.Registered {
		out.Registered = append(out.Registered, m.File)
	}
	for _, m := range st.Unregistered {
		out.Unregistered = append(out.Unregistered, m.File)
	}
	if run, ok := h.cfg.Migrations.Last(); ok {
		out.Run = &run
	}
	slices.SortFunc(out.Templates, func(a, b MigrationState) int { return cmp.Compare(a.Name, b.Name) })
	writeJSON(w, http.StatusOK, out)
}
