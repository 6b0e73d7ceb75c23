package neon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"golang.org/x/sync/singleflight"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/internal/backoff"
)

const (
	// Port is the port of every Neon endpoint (docs/neon-api.md §8.1).
	Port = 5432
	// fullFor is how long a project that refused a branch (422
	// BRANCHES_LIMIT_EXCEEDED) or reached MaxBranches is skipped, unless
	// this provider deletes a branch in it first. After that it is tried
	// again, since branches may have been deleted elsewhere.
	fullFor = 10 * time.Minute
	// lostLookups is how many times a create whose answer was lost looks for
	// its object by name before concluding the request never landed.
	lostLookups = 3
	// flightRetries bounds how often a caller joins a new create flight
	// after the one it waited on ended with its leader's context.
	flightRetries = 3
)

// Provider provisions tenants through the Neon API v2: a branch per tenant
// (ModeBranch) or a project per tenant (ModeProject). It implements
// provision.Provider and is safe for concurrent use.
//
// Concurrent Create calls for one tenant in one process share one flight;
// across processes, branch names are unique per project (a second create
// answers 409 and is adopted), while project names are not unique at Neon,
// so in project mode callers must serialise creates per tenant across
// processes (the resolver's catalog lock does).
type Provider struct {
	cfg     Config
	c       *client
	log     *slog.Logger
	creates singleflight.Group
	joins   atomic.Int64 // Create calls that joined or led a flight; read by tests

	mu struct {
		sync.Mutex
		full    map[string]time.Time // project id -> skipped until; guarded by mu
		pending map[string]int       // project id -> creates in flight; guarded by mu
	}
}

var _ provision.Provider = (*Provider)(nil)

// New validates cfg and returns a provider. It sends no request.
func New(cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Mode = cfg.mode()
	cfg.Projects = slices.Clone(cfg.Projects)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{
			Timeout:   DefaultHTTPTimeout,
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
		}
	}
	p := &Provider{
		cfg: cfg,
		log: log,
		c: &client{
			base:   cfg.baseURL(),
			key:    cfg.APIKey,
			http:   hc,
			lim:    newLimiter(cfg.requestsPerMinute(), cfg.routePerSecond()),
			budget: cfg.retryBudget(),
			delay:  cfg.retryDelay(),
			log:    log,
		},
	}
	p.mu.full = make(map[string]time.Time)
	p.mu.pending = make(map[string]int)
	return p, nil
}

// Name returns "neon", the provider's name in the catalog.
func (p *Provider) Name() string { return "neon" }

// CloseIdleConnections closes the HTTP client's idle connections, for a
// clean shutdown. The provider stays usable.
func (p *Provider) CloseIdleConnections() { p.c.http.CloseIdleConnections() }

// Tenant describes a tenant's resources at Neon. It holds no secret.
type Tenant struct {
	// Name is the branch or project name: Config.Prefix + tenant ID.
	Name string
	// ProjectID and BranchID locate the tenant's branch (in project mode,
	// its project's default branch).
	ProjectID, BranchID string
	// EndpointID is the branch's read_write endpoint ("" if it has none).
	EndpointID string
	// Host is the endpoint's pooled host name ("" if it has no endpoint).
	Host string
	// ProviderID is what Create puts in Endpoint.ProviderID:
	// "<project_id>/<branch_id>" in branch mode, "<project_id>" in project
	// mode.
	ProviderID string
}

// Lookup finds tenant's branch (searching every configured project, in
// order) or project by exact name, without creating or changing anything.
// It reports false if there is none. It costs one list call per configured
// project (branch mode) or one or more list calls (project mode), plus one
// call for the endpoint. Blocks until done or ctx ends.
func (p *Provider) Lookup(ctx context.Context, tenant string) (Tenant, bool, error) {
	name, err := p.name(tenant)
	if err != nil {
		return Tenant{}, false, err
	}
	loc, ok, err := p.find(ctx, name)
	if err != nil || !ok {
		return Tenant{}, false, wrap("look up", tenant, err)
	}
	t := Tenant{Name: name, ProjectID: loc.projectID, BranchID: loc.branchID}
	ep, err := p.endpointOf(ctx, loc)
	if err != nil && !errors.Is(err, errNoEndpoint) {
		return Tenant{}, false, wrap("look up", tenant, err)
	}
	if err == nil {
		t.EndpointID, t.Host = ep.ID, pooledHost(ep.Host)
		t.BranchID = ep.BranchID
	}
	t.ProviderID = p.providerID(t.ProjectID, t.BranchID)
	return t, true, nil
}

// Create returns tenant's endpoint, creating its branch or project first if
// none exists. The route uses the endpoint's pooled host (-pooler), port
// 5432, Config.Database and Config.Role (or the branch's first database and
// its owner); ProviderID is "<project_id>/<branch_id>" in branch mode and
// "<project_id>" in project mode.
//
// Create is idempotent by name: it first looks the tenant up and adopts
// what exists (waiting for operations still running on it). A create
// answered 409 (name taken) is adopted too, and one whose answer was lost
// is looked up again rather than re-sent blindly. It waits for the
// operations Neon starts (Config.OpTimeout); if one fails it deletes what
// it created, so that the next call starts afresh, and returns an error
// wrapping an *OperationError. In branch mode it moves on to the next
// project when one is full.
//
// The password comes from the create answer (or, with
// Config.UniquePasswords, a reset of the new branch's role), else
// reveal_password, else (the project does not store passwords)
// reset_password. Errors and logs never contain it or the API key.
//
// Concurrent calls for one tenant share one flight; if the caller leading
// it gives up (its ctx ends), the others start a new one. Blocks until
// done or ctx ends.
func (p *Provider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	name, err := p.name(tenant)
	if err != nil {
		return provision.Endpoint{}, err
	}
	for i := 0; ; i++ {
		ch := p.creates.DoChan(name, func() (any, error) { return p.create(ctx, name) })
		p.joins.Add(1) // DoChan has registered this caller: tests wait on it
		var res singleflight.Result
		select {
		case <-ctx.Done():
			return provision.Endpoint{}, wrap("create", tenant, ctx.Err())
		case res = <-ch:
		}
		if res.Err != nil && res.Shared && ctx.Err() == nil && i < flightRetries &&
			(errors.Is(res.Err, context.Canceled) || errors.Is(res.Err, context.DeadlineExceeded)) {
			continue // the flight's leader gave up; this caller has not
		}
		if res.Err != nil {
			return provision.Endpoint{}, wrap("create", tenant, res.Err)
		}
		return res.Val.(provision.Endpoint), nil
	}
}

func (p *Provider) create(ctx context.Context, name string) (provision.Endpoint, error) {
	loc, ok, err := p.find(ctx, name)
	if err != nil {
		return provision.Endpoint{}, err
	}
	if ok {
		return p.adopt(ctx, loc)
	}
	if p.cfg.Mode == ModeProject {
		return p.createProject(ctx, name)
	}
	return p.createBranch(ctx, name)
}

// Delete removes tenant's branch (waiting for its delete operations) or
// project. It returns an error wrapping provision.ErrTenantNotFound if
// nothing by the tenant's name exists; should there be several (project
// names are not unique), it deletes them all. Blocks until done or ctx
// ends. A Delete racing a Create of the same tenant may leave it created.
func (p *Provider) Delete(ctx context.Context, tenant string) error {
	name, err := p.name(tenant)
	if err != nil {
		return err
	}
	locs, err := p.findAll(ctx, name)
	if err != nil {
		return wrap("delete", tenant, err)
	}
	if len(locs) == 0 {
		return wrap("delete", tenant, provision.ErrTenantNotFound)
	}
	for _, loc := range locs {
		if err := p.deleteOne(ctx, loc); err != nil {
			return wrap("delete", tenant, err)
		}
	}
	p.log.Info("neon: tenant deleted", "tenant", tenant, "name", name, "mode", string(p.cfg.Mode))
	return nil
}

func (p *Provider) deleteOne(ctx context.Context, loc location) error {
	if p.cfg.Mode == ModeProject {
		// DELETE /projects/{pid}: 200, or 404 if it is already gone
		// (docs/neon-api.md §5): both leave it deleted.
		_, err := p.c.do(ctx, request{method: http.MethodDelete, route: "/projects/{}", args: []string{loc.projectID}, repeatable: true}, nil)
		if err != nil && apiStatus(err) != http.StatusNotFound {
			return err
		}
		return nil
	}
	// DELETE branch: 200 with operations, or 204 if it is already gone.
	var resp operationsResp
	_, err := p.c.do(ctx, request{method: http.MethodDelete, route: "/projects/{}/branches/{}",
		args: []string{loc.projectID, loc.branchID}, repeatable: true}, &resp)
	if err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.mu.full, loc.projectID) // room again
	p.mu.Unlock()
	return p.waitOps(ctx, loc.projectID, resp.Operations)
}

// location is a tenant's branch or project at Neon.
type location struct {
	projectID string
	branchID  string // "" when not known yet (project mode, from the list)
	state     string // branch current_state, when known
}

// find returns the tenant's branch or project named name. In project mode
// several projects may carry the name; the oldest wins.
func (p *Provider) find(ctx context.Context, name string) (location, bool, error) {
	locs, err := p.findAll(ctx, name)
	if err != nil || len(locs) == 0 {
		return location{}, false, err
	}
	if len(locs) > 1 {
		p.log.Warn("neon: several objects carry one tenant's name; using the first", "name", name, "count", len(locs),
			"project", locs[0].projectID, "branch", locs[0].branchID)
	}
	return locs[0], true, nil
}

func (p *Provider) findAll(ctx context.Context, name string) ([]location, error) {
	if p.cfg.Mode == ModeProject {
		return p.findProjects(ctx, name)
	}
	var locs []location
	for _, bp := range p.cfg.Projects {
		l, err := p.findBranchesIn(ctx, bp.ID, name)
		if err != nil {
			return nil, err
		}
		locs = append(locs, l...)
	}
	return locs, nil
}

// findBranchesIn lists the branches of project pid named exactly name:
// search matches names and ids partially (docs/neon-api.md §5).
func (p *Provider) findBranchesIn(ctx context.Context, pid, name string) ([]location, error) {
	var locs []location
	q := url.Values{"search": {name}}
	for range 100 { // pages; a search for one name fits in one
		var resp branchListResp
		_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/branches", args: []string{pid},
			query: q, repeatable: true}, &resp)
		if err != nil {
			return nil, err
		}
		for _, b := range resp.Branches {
			if b.Name == name {
				locs = append(locs, location{projectID: pid, branchID: b.ID, state: b.CurrentState})
			}
		}
		if resp.Pagination == nil || resp.Pagination.Next == "" || len(resp.Branches) == 0 {
			break
		}
		q.Set("cursor", resp.Pagination.Next)
	}
	return locs, nil
}

// findProjects lists the projects named exactly name, oldest first.
func (p *Provider) findProjects(ctx context.Context, name string) ([]location, error) {
	const limit = 400 // the most GET /projects allows (docs/neon-api.md §5)
	var found []apiProject
	q := url.Values{"search": {name}, "limit": {fmt.Sprint(limit)}}
	if p.cfg.OrgID != "" {
		q.Set("org_id", p.cfg.OrgID)
	}
	for range 100 {
		var resp projectListResp
		_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects", query: q, repeatable: true}, &resp)
		if err != nil {
			return nil, err
		}
		for _, pr := range resp.Projects {
			if pr.Name == name {
				found = append(found, pr)
			}
		}
		if len(resp.Projects) < limit || resp.Pagination == nil || resp.Pagination.Cursor == "" {
			break
		}
		q.Set("cursor", resp.Pagination.Cursor)
	}
	slices.SortStableFunc(found, func(a, b apiProject) int {
		return cmp.Or(cmp.Compare(a.CreatedAt, b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	locs := make([]location, len(found))
	for i, pr := range found {
		locs[i] = location{projectID: pr.ID}
	}
	return locs, nil
}

var errNoEndpoint = errors.New("no read_write endpoint")

// endpointOf returns the read_write endpoint of loc's branch (in project
// mode, of the project, whose only endpoint is on its default branch).
func (p *Provider) endpointOf(ctx context.Context, loc location) (apiEndpoint, error) {
	r := request{method: http.MethodGet, route: "/projects/{}/endpoints", args: []string{loc.projectID}, repeatable: true}
	if loc.branchID != "" {
		r.route, r.args = "/projects/{}/branches/{}/endpoints", []string{loc.projectID, loc.branchID}
	}
	var resp endpointsResp
	if _, err := p.c.do(ctx, r, &resp); err != nil {
		return apiEndpoint{}, err
	}
	ep, ok := readWrite(resp.Endpoints, loc.branchID)
	if !ok {
		return apiEndpoint{}, fmt.Errorf("project %s branch %s: %w", loc.projectID, loc.branchID, errNoEndpoint)
	}
	return ep, nil
}

// readWrite picks the read_write endpoint of branch bid ("" = any branch;
// projects created here have one endpoint, on the default branch).
func readWrite(eps []apiEndpoint, bid string) (apiEndpoint, bool) {
	for _, ep := range eps {
		if ep.Type == "read_write" && (bid == "" || ep.BranchID == bid) && ep.Host != "" {
			return ep, true
		}
	}
	return apiEndpoint{}, false
}

// adopt returns the endpoint of a tenant that already exists (found by
// name): it waits for operations still running on its branch, then reads
// its endpoint, database and password.
func (p *Provider) adopt(ctx context.Context, loc location) (provision.Endpoint, error) {
	ep, err := p.endpointOf(ctx, loc)
	if err != nil {
		return provision.Endpoint{}, err
	}
	loc.branchID = ep.BranchID
	if err := p.waitBranchOps(ctx, loc); err != nil {
		return provision.Endpoint{}, err
	}
	return p.route(ctx, target{loc: loc, endpoint: ep})
}

// createBranch creates the tenant's branch in the first project with room.
func (p *Provider) createBranch(ctx context.Context, name string) (provision.Endpoint, error) {
	tried := make(map[string]bool)
	var limitErrs []error
	for {
		bp, ok := p.pickProject(tried)
		if !ok {
			err := fmt.Errorf("all %d configured projects are full (branch limits); add a project or raise the limits", len(p.cfg.Projects))
			return provision.Endpoint{}, errors.Join(append([]error{err}, limitErrs...)...)
		}
		tried[bp.ID] = true
		if bp.MaxBranches > 0 {
			var resp countResp
			_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/branches/count",
				args: []string{bp.ID}, repeatable: true}, &resp)
			if err != nil {
				return provision.Endpoint{}, err
			}
			if !p.reserve(bp, resp.Count) {
				p.log.Info("neon: project reached its branch cap; trying the next", "project", bp.ID, "max_branches", bp.MaxBranches)
				continue
			}
		} else {
			p.reserve(bp, 0)
		}
		ep, err := p.createBranchIn(ctx, bp, name)
		p.release(bp.ID)
		if isBranchLimit(err) {
			p.markFull(bp.ID)
			p.log.Info("neon: project is at its plan's branch limit; trying the next", "project", bp.ID)
			limitErrs = append(limitErrs, err)
			continue
		}
		return ep, err
	}
}

// pickProject returns the first configured project not tried yet and not
// known to be full.
func (p *Provider) pickProject(tried map[string]bool) (BranchProject, bool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, bp := range p.cfg.Projects {
		if tried[bp.ID] {
			continue
		}
		if until, ok := p.mu.full[bp.ID]; ok {
			if now.Before(until) {
				continue
			}
			delete(p.mu.full, bp.ID)
		}
		return bp, true
	}
	return BranchProject{}, false
}

// reserve counts a create in bp as in flight, unless count existing
// branches plus the creates already in flight reach bp.MaxBranches; then it
// marks bp full and reports false.
func (p *Provider) reserve(bp BranchProject, count int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if bp.MaxBranches > 0 && count+p.mu.pending[bp.ID] >= bp.MaxBranches {
		p.mu.full[bp.ID] = time.Now().Add(fullFor)
		return false
	}
	p.mu.pending[bp.ID]++
	return true
}

func (p *Provider) release(pid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.pending[pid]--; p.mu.pending[pid] <= 0 {
		delete(p.mu.pending, pid)
	}
}

func (p *Provider) markFull(pid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.full[pid] = time.Now().Add(fullFor)
}

// createBranchIn creates branch name in project bp (docs/neon-api.md §4),
// with a read_write endpoint, and returns its route.
func (p *Provider) createBranchIn(ctx context.Context, bp BranchProject, name string) (provision.Endpoint, error) {
	var body createBranchReq
	body.Branch.Name = name
	body.Branch.ParentID = bp.ParentBranchID
	body.Endpoints = []endpointOptions{{
		Type:                  "read_write",
		AutoscalingLimitMinCU: p.cfg.MinCU,
		AutoscalingLimitMaxCU: p.cfg.MaxCU,
		SuspendTimeoutSeconds: p.cfg.suspendSeconds(),
	}}
	r := request{method: http.MethodPost, route: "/projects/{}/branches", args: []string{bp.ID}, body: body}
	for posts := 1; ; posts++ {
		var resp createdResp
		_, err := p.c.do(ctx, r, &resp)
		if err == nil {
			if resp.Branch.ID == "" {
				return provision.Endpoint{}, fmt.Errorf("project %s: create branch: answer has no branch", bp.ID)
			}
			loc := location{projectID: bp.ID, branchID: resp.Branch.ID}
			if err := p.waitOps(ctx, bp.ID, resp.Operations); err != nil {
				return provision.Endpoint{}, p.rollback(ctx, loc, fmt.Errorf("create branch %s: %w", loc.branchID, err))
			}
			ep, ok := readWrite(resp.Endpoints, loc.branchID)
			if !ok {
				if ep, err = p.endpointOf(ctx, loc); err != nil {
					return provision.Endpoint{}, err
				}
			}
			p.log.Info("neon: tenant branch created", "name", name, "project", bp.ID, "branch", loc.branchID)
			return p.route(ctx, target{loc: loc, endpoint: ep, created: &resp, fresh: true})
		}
		var lost *LostError
		switch {
		case apiStatus(err) == http.StatusConflict:
			// The name is taken: a concurrent or earlier create of ours.
			locs, ferr := p.findBranchesIn(ctx, bp.ID, name)
			if ferr != nil {
				return provision.Endpoint{}, errors.Join(err, ferr)
			}
			if len(locs) == 0 {
				return provision.Endpoint{}, err
			}
			return p.adopt(ctx, locs[0])
		case errors.As(err, &lost):
			// Never re-send blindly (docs/neon-api.md §2.2): look first.
			loc, ok, ferr := p.findAfterLost(ctx, name, func(ctx context.Context) ([]location, error) {
				return p.findBranchesIn(ctx, bp.ID, name)
			})
			if ferr != nil {
				return provision.Endpoint{}, errors.Join(err, ferr)
			}
			if ok {
				p.log.Info("neon: create branch answer lost; adopting the branch found by name", "name", name, "project", bp.ID)
				return p.adopt(ctx, loc)
			}
			// It never landed. Sending it again is safe: branch names are
			// unique per project, so a late copy of the first request
			// would make this one answer 409, which is adopted.
			if posts >= 2 {
				return provision.Endpoint{}, err
			}
		default:
			return provision.Endpoint{}, err
		}
	}
}

// rollback deletes a branch or project this call created when one of its
// operations failed, so that the next Create starts afresh instead of
// adopting a tenant that may not work. Other errors (a timeout: the
// operations may still finish) leave it for the next Create to adopt. It
// runs even if ctx has ended, within Config.OpTimeout, and returns err
// with the outcome added.
func (p *Provider) rollback(ctx context.Context, loc location, err error) error {
	if _, failed := errors.AsType[*OperationError](err); !failed {
		return err
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.opTimeout())
	defer cancel()
	if derr := p.deleteOne(dctx, loc); derr != nil {
		return fmt.Errorf("%w; deleting it failed too: %v", err, derr)
	}
	return fmt.Errorf("%w; deleted it, so the next create starts afresh", err)
}

// findAfterLost looks for an object whose create answer was lost, a few
// times with backoff, since the request may still be in flight at Neon.
func (p *Provider) findAfterLost(ctx context.Context, name string, find func(context.Context) ([]location, error)) (location, bool, error) {
	for i := range lostLookups {
		if i > 0 {
			if err := backoff.Sleep(ctx, p.cfg.retryDelay()<<i); err != nil {
				return location{}, false, err
			}
		}
		locs, err := find(ctx)
		if err != nil {
			return location{}, false, err
		}
		if len(locs) > 0 {
			return locs[0], true, nil
		}
	}
	return location{}, false, nil
}

// createProject creates the tenant's project (docs/neon-api.md §3).
func (p *Provider) createProject(ctx context.Context, name string) (provision.Endpoint, error) {
	var body createProjectReq
	body.Project.Name = name
	body.Project.RegionID = p.cfg.RegionID
	body.Project.PGVersion = p.cfg.PGVersion
	body.Project.OrgID = p.cfg.OrgID
	if s := (defaultEndpointSettings{p.cfg.MinCU, p.cfg.MaxCU, p.cfg.suspendSeconds()}); s != (defaultEndpointSettings{}) {
		body.Project.DefaultEndpointSettings = &s
	}
	var resp createdResp
	_, err := p.c.do(ctx, request{method: http.MethodPost, route: "/projects", body: body}, &resp)
	var lost *LostError
	switch {
	case err == nil:
	case apiStatus(err) == http.StatusConflict, errors.As(err, &lost):
		// Project names are not unique at Neon, so a project created by a
		// request whose answer was lost can only be found by listing; if
		// it is not there the request is not re-sent (it might still land
		// and make a duplicate): the caller's next Create looks again.
		loc, ok, ferr := p.findAfterLost(ctx, name, func(ctx context.Context) ([]location, error) {
			return p.findProjects(ctx, name)
		})
		if ferr != nil {
			return provision.Endpoint{}, errors.Join(err, ferr)
		}
		if !ok {
			return provision.Endpoint{}, fmt.Errorf("%w; no project by that name appeared, so it was not re-sent", err)
		}
		p.log.Info("neon: create project answer lost; adopting the project found by name", "name", name, "project", loc.projectID)
		return p.adopt(ctx, loc)
	default:
		return provision.Endpoint{}, err
	}
	pid := resp.Project.ID
	if pid == "" || resp.Branch.ID == "" {
		return provision.Endpoint{}, errors.New("create project: answer has no project or branch")
	}
	loc := location{projectID: pid, branchID: resp.Branch.ID}
	if err := p.waitOps(ctx, pid, resp.Operations); err != nil {
		return provision.Endpoint{}, p.rollback(ctx, loc, fmt.Errorf("create project %s: %w", pid, err))
	}
	ep, ok := readWrite(resp.Endpoints, loc.branchID)
	if !ok {
		if ep, err = p.endpointOf(ctx, loc); err != nil {
			return provision.Endpoint{}, err
		}
	}
	p.log.Info("neon: tenant project created", "name", name, "project", pid)
	return p.route(ctx, target{loc: loc, endpoint: ep, created: &resp, fresh: true})
}

// target is what route needs to build a tenant's endpoint.
type target struct {
	loc      location
	endpoint apiEndpoint
	created  *createdResp // the create answer, if this call created it
	fresh    bool         // created by this call
}

// route builds the tenant's provision.Endpoint: pooled host, database,
// role and password.
func (p *Provider) route(ctx context.Context, t target) (provision.Endpoint, error) {
	var dbs []apiDatabase
	if t.created != nil {
		dbs = t.created.Databases
	}
	db, role, err := p.dbAndRole(ctx, t.loc, dbs)
	if err != nil {
		return provision.Endpoint{}, err
	}
	var password string
	if t.created != nil && !(t.fresh && p.cfg.UniquePasswords) {
		password = createdPassword(t.created, db, role)
	}
	if password == "" {
		if password, err = p.password(ctx, t.loc, role, t.fresh && p.cfg.UniquePasswords); err != nil {
			return provision.Endpoint{}, err
		}
	}
	return provision.Endpoint{
		Host:       pooledHost(t.endpoint.Host),
		Port:       Port,
		Database:   db,
		User:       role,
		Password:   password,
		ProviderID: p.providerID(t.loc.projectID, t.loc.branchID),
	}, nil
}

// dbAndRole picks the database and role: Config's, else the first database
// (of dbs, or listed from the branch) and its owner.
func (p *Provider) dbAndRole(ctx context.Context, loc location, dbs []apiDatabase) (db, role string, err error) {
	db, role = p.cfg.Database, p.cfg.Role
	if db != "" && role != "" {
		return db, role, nil
	}
	if len(dbs) == 0 {
		var resp databasesResp
		_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/branches/{}/databases",
			args: []string{loc.projectID, loc.branchID}, repeatable: true}, &resp)
		if err != nil {
			return "", "", err
		}
		dbs = resp.Databases
	}
	for _, d := range dbs {
		if db == "" || d.Name == db {
			if role == "" {
				role = d.OwnerName
			}
			return d.Name, role, nil
		}
	}
	if db == "" {
		return "", "", fmt.Errorf("project %s branch %s has no database", loc.projectID, loc.branchID)
	}
	return "", "", fmt.Errorf("project %s branch %s has no database %q", loc.projectID, loc.branchID, db)
}

// createdPassword finds role's password in a create answer: in roles
// (create project) or in the connection parameters for db and role.
func createdPassword(resp *createdResp, db, role string) string {
	for _, r := range resp.Roles {
		if r.Name == role && r.Password != "" {
			return r.Password
		}
	}
	for _, u := range resp.ConnectionURIs {
		if u.Params.Role == role && u.Params.Database == db && u.Params.Password != "" {
			return u.Params.Password
		}
	}
	return ""
}

// password reads role's password with reveal_password or, if reset is set
// or the project stores no passwords (412), sets a new one with
// reset_password and waits until it is in force (docs/neon-api.md §6).
func (p *Provider) password(ctx context.Context, loc location, role string, reset bool) (string, error) {
	args := []string{loc.projectID, loc.branchID, role}
	if !reset {
		var resp passwordResp
		_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/branches/{}/roles/{}/reveal_password",
			args: args, repeatable: true}, &resp)
		switch {
		case err == nil && resp.Password != "":
			return resp.Password, nil
		case err == nil, apiStatus(err) == http.StatusPreconditionFailed:
			// Not stored: reset it.
		default:
			return "", fmt.Errorf("password of role %q: %w", role, err)
		}
	}
	// Sending it twice only makes the second password the one in force.
	var resp resetPasswordResp
	_, err := p.c.do(ctx, request{method: http.MethodPost, route: "/projects/{}/branches/{}/roles/{}/reset_password",
		args: args, repeatable: true}, &resp)
	if err != nil {
		return "", fmt.Errorf("reset password of role %q: %w", role, err)
	}
	if resp.Role.Password == "" {
		return "", fmt.Errorf("reset password of role %q: answer has no password", role)
	}
	// The new password works once its operations finish.
	if err := p.waitOps(ctx, loc.projectID, resp.Operations); err != nil {
		return "", fmt.Errorf("reset password of role %q: %w", role, err)
	}
	return resp.Role.Password, nil
}

// waitBranchOps waits for the operations in flight on loc's branch, such as
// those of a create by another caller whose branch this one adopts. It
// fails if the latest operation of some action on the branch failed (a
// create that failed and could not be rolled back): such a branch may be
// unusable, and only an operator can tell.
func (p *Provider) waitBranchOps(ctx context.Context, loc location) error {
	var resp operationsResp
	_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/operations", args: []string{loc.projectID},
		query: url.Values{"limit": {"100"}}, repeatable: true}, &resp)
	if err != nil {
		return err
	}
	var inFlight []apiOperation
	latest := make(map[string]bool) // actions seen; the list is newest first
	for _, op := range resp.Operations {
		if op.BranchID != loc.branchID {
			continue
		}
		if !latest[op.Action] {
			latest[op.Action] = true
			if err := opError(loc.projectID, op); err != nil {
				return fmt.Errorf("branch %s is broken, delete it: %w", loc.branchID, err)
			}
		}
		if !opDone(op.Status) {
			inFlight = append(inFlight, op)
		}
	}
	slices.Reverse(inFlight) // oldest first, the order they run in
	return p.waitOps(ctx, loc.projectID, inFlight)
}

// waitOps polls the operations of ops still in flight (GET
// /projects/{pid}/operations/{id}; docs/neon-api.md §7.2) until all are
// finished or skipped, one fails (*OperationError), Config.OpTimeout passes,
// or ctx ends. Neon runs a request's operations one after the other, so each
// round polls them in order and stops at the first one still in flight.
// The delay between rounds grows from Config.OpPollInterval by half each
// round, up to 4 times it, to spare the rate limit during long operations.
func (p *Provider) waitOps(ctx context.Context, pid string, ops []apiOperation) error {
	pending := make([]apiOperation, 0, len(ops))
	for _, op := range ops {
		if err := opError(pid, op); err != nil {
			return err
		}
		if !opDone(op.Status) {
			pending = append(pending, op)
		}
	}
	poll := p.cfg.opPoll()
	delay := poll
	deadline := time.Now().Add(p.cfg.opTimeout())
	for len(pending) > 0 {
		if time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("operations not finished within %v: %s", p.cfg.opTimeout(), describeOps(pending))
		}
		if err := backoff.Sleep(ctx, delay); err != nil {
			return err
		}
		delay = min(delay*3/2, 4*poll)
		for len(pending) > 0 {
			op := pending[0]
			var resp operationResp
			_, err := p.c.do(ctx, request{method: http.MethodGet, route: "/projects/{}/operations/{}",
				args: []string{pid, op.ID}, repeatable: true}, &resp)
			if err != nil {
				return fmt.Errorf("poll operation %s (%s): %w", op.ID, op.Action, err)
			}
			if cur := resp.Operation; cur.ID != "" { // tolerate an empty answer: poll again
				op = cur
			}
			if err := opError(pid, op); err != nil {
				return err
			}
			if !opDone(op.Status) {
				pending[0] = op
				break
			}
			pending = pending[1:]
		}
	}
	return nil
}

func opError(pid string, op apiOperation) error {
	if !opFailed(op.Status) {
		return nil
	}
	return &OperationError{ProjectID: cmp.Or(op.ProjectID, pid), ID: op.ID, Action: op.Action, Status: op.Status, Reason: op.Error}
}

func describeOps(ops []apiOperation) string {
	s := make([]string, len(ops))
	for i, op := range ops {
		s[i] = op.Action + " " + op.Status + " (" + op.ID + ")"
	}
	return strings.Join(s, ", ")
}

func (p *Provider) providerID(pid, bid string) string {
	if p.cfg.Mode == ModeProject {
		return pid
	}
	return pid + "/" + bid
}

// pooledHost turns an endpoint host into its pooler host by suffixing the
// first label with "-pooler" (docs/neon-api.md §8.1):
// ep-x-123.c-2.us-east-2.aws.neon.tech -> ep-x-123-pooler.c-2.us-east-2.aws.neon.tech.
func pooledHost(host string) string {
	label, rest, _ := strings.Cut(host, ".")
	if label == "" || strings.HasSuffix(label, "-pooler") {
		return host
	}
	if rest == "" {
		return label + "-pooler"
	}
	return label + "-pooler." + rest
}

// name returns the Neon name of tenant's branch or project.
func (p *Provider) name(tenant string) (string, error) {
	if tenant == "" {
		return "", errors.New("neon: empty tenant ID")
	}
	if strings.ContainsFunc(tenant, unicode.IsControl) {
		return "", fmt.Errorf("neon: tenant ID %q contains control characters", tenant)
	}
	name := p.cfg.prefix() + tenant
	if len(name) > maxNameLen {
		return "", fmt.Errorf("neon: tenant %q: name %q is longer than %d bytes", tenant, name, maxNameLen)
	}
	return name, nil
}

// wrap adds the package, verb and tenant to err (nil stays nil).
func wrap(verb, tenant string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("neon: %s tenant %q: %w", verb, tenant, err)
}

// SessionEndpoint implements provision.SessionRouter: the endpoint's
// direct host instead of its -pooler one, which runs PgBouncer in
// transaction mode (docs/neon-api.md §8.2).
func (p *Provider) SessionEndpoint(ep provision.Endpoint) provision.Endpoint {
	ep.Host = provision.DirectHost(ep.Host)
	return ep
}
