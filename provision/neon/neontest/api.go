package neontest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xdg-go/scram"
)

// The API calls of docs/neon-api.md §0. Each handler decodes its
// request, calls a core method that works under s.mu (also used by the Go
// helpers) and encodes the answer.

// projectCreateRequest is the body of POST /projects.
type projectCreateRequest struct {
	Project *projectCreateFields `json:"project"`
}

type projectCreateFields struct {
	Name                    *string                `json:"name"`
	RegionID                string                 `json:"region_id"`
	PGVersion               int                    `json:"pg_version"`
	OrgID                   string                 `json:"org_id"`
	StorePasswords          *bool                  `json:"store_passwords"`
	HistoryRetentionSeconds *int64                 `json:"history_retention_seconds"`
	Provisioner             string                 `json:"provisioner"`
	DefaultEndpointSettings *endpointSettingFields `json:"default_endpoint_settings"`
	AutoscalingLimitMinCU   *float64               `json:"autoscaling_limit_min_cu"` // deprecated spelling
	AutoscalingLimitMaxCU   *float64               `json:"autoscaling_limit_max_cu"`
	Branch                  *struct {
		Name         string `json:"name"`
		RoleName     string `json:"role_name"`
		DatabaseName string `json:"database_name"`
	} `json:"branch"`
	Settings map[string]any `json:"settings"`
}

type endpointSettingFields struct {
	AutoscalingLimitMinCU *float64          `json:"autoscaling_limit_min_cu"`
	AutoscalingLimitMaxCU *float64          `json:"autoscaling_limit_max_cu"`
	SuspendTimeoutSeconds *int64            `json:"suspend_timeout_seconds"`
	PGSettings            map[string]string `json:"pg_settings"`
}

// branchCreateRequest is the (optional) body of POST .../branches.
type branchCreateRequest struct {
	Branch struct {
		ParentID        string     `json:"parent_id"`
		Name            string     `json:"name"`
		ParentLSN       string     `json:"parent_lsn"`
		ParentTimestamp string     `json:"parent_timestamp"`
		Protected       bool       `json:"protected"`
		Archived        bool       `json:"archived"`
		InitSource      string     `json:"init_source"`
		ExpiresAt       *time.Time `json:"expires_at"`
	} `json:"branch"`
	Endpoints       []endpointCreateFields `json:"endpoints"`
	AnnotationValue map[string]string      `json:"annotation_value"`
}

type endpointCreateFields struct {
	Type                  string   `json:"type"`
	AutoscalingLimitMinCU *float64 `json:"autoscaling_limit_min_cu"`
	AutoscalingLimitMaxCU *float64 `json:"autoscaling_limit_max_cu"`
	SuspendTimeoutSeconds *int64   `json:"suspend_timeout_seconds"`
	Provisioner           string   `json:"provisioner"`
}

// --- projects ---

func (s *Server) hCreateProject(w http.ResponseWriter, r *http.Request) {
	var req projectCreateRequest
	if e := decodeBody(w, r, &req, false); e != nil {
		s.writeError(w, r, e)
		return
	}
	if req.Project == nil {
		s.writeError(w, r, badRequest("project is required"))
		return
	}
	out, e := s.createProject(req)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	if s.takeDrop() {
		s.hangUp(w)
		return
	}
	s.writeJSON(w, http.StatusCreated, out)
}

func checkName(what, name string, max int) *APIError {
	if name == "" || len(name) > max || strings.ContainsRune(name, 0) {
		return badRequest(fmt.Sprintf("%s must be 1 to %d bytes long, without NUL", what, max))
	}
	return nil
}

// applySettings overlays the endpoint settings in f on d and validates them.
func applySettings(d EndpointSettings, minCU, maxCU *float64, suspend *int64) (EndpointSettings, *APIError) {
	if minCU != nil {
		d.AutoscalingLimitMinCU = *minCU
	}
	if maxCU != nil {
		d.AutoscalingLimitMaxCU = *maxCU
	} else if d.AutoscalingLimitMaxCU < d.AutoscalingLimitMinCU {
		d.AutoscalingLimitMaxCU = d.AutoscalingLimitMinCU
	}
	if suspend != nil {
		d.SuspendTimeoutSeconds = *suspend
	}
	switch {
	case d.AutoscalingLimitMinCU < 0.25:
		return d, badRequest("autoscaling_limit_min_cu must be at least 0.25")
	case d.AutoscalingLimitMaxCU < d.AutoscalingLimitMinCU:
		return d, badRequest("autoscaling_limit_max_cu must not be less than autoscaling_limit_min_cu")
	case d.SuspendTimeoutSeconds < -1 || d.SuspendTimeoutSeconds > 604800:
		// Neon also refuses 1..59; the fake takes them, so tests can watch
		// an endpoint go idle.
		return d, badRequest("suspend_timeout_seconds must be between -1 and 604800")
	}
	return d, nil
}

func (s *Server) createProject(req projectCreateRequest) (CreatedProject, *APIError) {
	f := req.Project
	region := f.RegionID
	if region == "" {
		region = s.cfg.region()
	}
	if !slices.Contains(regions, region) {
		return CreatedProject{}, badRequest(fmt.Sprintf("region %q is not supported", region))
	}
	pgVersion := f.PGVersion
	if pgVersion == 0 {
		pgVersion = 17
	}
	if pgVersion < 14 || pgVersion > 18 {
		return CreatedProject{}, badRequest("pg_version must be between 14 and 18")
	}
	name := ""
	if f.Name != nil {
		name = *f.Name
		if len(name) > 256 {
			return CreatedProject{}, badRequest("project name must be at most 256 characters")
		}
	}
	retention := int64(86400)
	if f.HistoryRetentionSeconds != nil {
		retention = *f.HistoryRetentionSeconds
		if retention < 0 || retention > 2592000 {
			return CreatedProject{}, badRequest("history_retention_seconds must be between 0 and 2592000")
		}
	}
	defaults := EndpointSettings{AutoscalingLimitMinCU: 0.25, AutoscalingLimitMaxCU: 0.25}
	minCU, maxCU := f.AutoscalingLimitMinCU, f.AutoscalingLimitMaxCU
	var suspend *int64
	if d := f.DefaultEndpointSettings; d != nil {
		if d.AutoscalingLimitMinCU != nil {
			minCU = d.AutoscalingLimitMinCU
		}
		if d.AutoscalingLimitMaxCU != nil {
			maxCU = d.AutoscalingLimitMaxCU
		}
		suspend = d.SuspendTimeoutSeconds
		defaults.PGSettings = d.PGSettings
	}
	defaults, e := applySettings(defaults, minCU, maxCU, suspend)
	if e != nil {
		return CreatedProject{}, e
	}
	brName, dbName, roleName := "main", "neondb", ""
	if b := f.Branch; b != nil {
		if b.Name != "" {
			brName = b.Name
		}
		if b.DatabaseName != "" {
			dbName = b.DatabaseName
		}
		roleName = b.RoleName
	}
	if roleName == "" {
		roleName = dbName + "_owner"
	}
	if e := checkName("branch name", brName, 256); e != nil {
		return CreatedProject{}, e
	}
	if e := checkName("database_name", dbName, maxIdentLen); e != nil {
		return CreatedProject{}, e
	}
	if e := checkName("role_name", roleName, maxIdentLen); e != nil {
		return CreatedProject{}, e
	}
	provisioner := f.Provisioner
	if provisioner == "" {
		provisioner = "k8s-neonvm"
	}
	settings := map[string]any{
		"allowed_ips":                map[string]any{"ips": []string{}, "protected_branches_only": false},
		"enable_logical_replication": false,
		"block_public_connections":   false,
		"block_vpc_connections":      false,
		"hipaa":                      false,
	}
	for k, v := range f.Settings {
		settings[k] = v
	}
	password := newPassword()
	creds, err := scramCreds(password)
	if err != nil {
		return CreatedProject{}, &APIError{Status: http.StatusInternalServerError, Message: err.Error()}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return CreatedProject{}, &APIError{Status: http.StatusServiceUnavailable, Message: "server closed"}
	}
	if limit := s.cfg.projectLimit(); len(s.mu.projects) >= limit {
		return CreatedProject{}, &APIError{
			Status:  http.StatusUnprocessableEntity,
			Code:    "PROJECTS_LIMIT_EXCEEDED",
			Message: fmt.Sprintf("user projects limit of %d exceeded, got %d", limit, len(s.mu.projects)),
		}
	}
	now := s.nowLocked()
	id := newProjectID()
	for s.mu.projects[id] != nil {
		id = newProjectID()
	}
	if name == "" {
		name = id
	}
	org := f.OrgID
	if org == "" {
		org = s.orgID
	}
	p := &project{
		id: id, name: name, regionID: region, orgID: org, provisioner: provisioner,
		pgVersion: pgVersion, storePasswords: f.StorePasswords == nil || *f.StorePasswords,
		historyRetention: retention, defaults: defaults, settings: settings,
		createdAt: now, updatedAt: now,
		branches: map[string]*branch{}, endpoints: map[string]*endpoint{}, opsByID: map[string]*operation{},
		localDBs: map[string]bool{}, localRoles: map[string]bool{},
	}
	b := s.newBranchLocked(p, brName, nil, now)
	b.isDefault = true
	p.defaultBranch = b
	r := &role{name: roleName, password: password, creds: creds, createdAt: now, updatedAt: now}
	b.roles = []*role{r}
	s.mu.nextDBID++
	db := &database{id: s.mu.nextDBID, name: dbName, owner: roleName, createdAt: now, updatedAt: now}
	b.dbs = []*database{db}
	ep := s.newEndpointLocked(p, b, "read_write", defaults, now)
	s.mu.projects[id] = p
	s.mu.all = append(s.mu.all, p)

	createOp := s.newOpLocked(p, "create_timeline", b.id, "")
	createOp.run, createOp.done = s.branchDataOp(p, b), s.branchReadyFn(b)
	startOp := s.newOpLocked(p, "start_compute", b.id, ep.id)
	startOp.done = s.endpointStartedFn(ep)
	s.enqueueLocked(p, createOp, startOp)

	return CreatedProject{
		Project:        p.wire(),
		ConnectionURIs: []ConnectionURI{connectionURI(r.name, password, ep, db.name)},
		Roles:          []Role{r.wire(b.id, true)},
		Databases:      []Database{db.wire(b.id)},
		Operations:     []Operation{createOp.Operation, startOp.Operation},
		Branch:         b.wire(),
		Endpoints:      []Endpoint{s.endpointWireLocked(ep)},
	}, nil
}

func (s *Server) newBranchLocked(p *project, name string, parent *branch, now time.Time) *branch {
	id := newBranchID()
	for p.branches[id] != nil {
		id = newBranchID()
	}
	if name == "" {
		name = id
	}
	b := &branch{
		p: p, id: id, name: name, parent: parent,
		state: BranchInit, pending: BranchReady,
		stateChangedAt: now, createdAt: now, updatedAt: now,
	}
	if parent != nil {
		s.mu.nextLSN += 0x1000 + uint64(now.Nanosecond()%0x800)
		b.parentLSN = fmt.Sprintf("0/%X", s.mu.nextLSN)
		b.parentTime = now
		parent.children++
	}
	p.branches[id] = b
	p.order = append(p.order, b)
	return b
}

func (s *Server) newEndpointLocked(p *project, b *branch, typ string, set EndpointSettings, now time.Time) *endpoint {
	id := newEndpointID()
	for s.mu.endpoints[id] != nil {
		id = newEndpointID()
	}
	ep := &endpoint{
		p: p, b: b, id: id, typ: typ,
		state: EndpointInit, pending: EndpointActive, starting: true,
		minCU: set.AutoscalingLimitMinCU, maxCU: set.AutoscalingLimitMaxCU, suspend: set.SuspendTimeoutSeconds,
		provisioner: p.provisioner, createdAt: now, updatedAt: now,
		sessions: map[*session]struct{}{},
	}
	s.mu.endpoints[id] = ep
	p.endpoints[id] = ep
	b.endpoints = append(b.endpoints, ep)
	return ep
}

// branchDataOp returns the Postgres work of creating b's roles and
// databases: from the template for a root branch, else from its parent's.
func (s *Server) branchDataOp(p *project, b *branch) func(context.Context) error {
	be := s.backend
	if be == nil {
		return nil
	}
	roles := make([]string, len(b.roles))
	for i, r := range b.roles {
		roles[i] = localName(b.id, r.name)
	}
	dbs := make([]dbPlan, len(b.dbs))
	for i, d := range b.dbs {
		plan := dbPlan{name: localName(b.id, d.name), owner: localName(b.id, d.owner)}
		if b.parent == nil {
			plan.from = be.template
			plan.reassign = [][2]string{{templateOwner, plan.owner}}
		} else {
			plan.from = localName(b.parent.id, d.name)
			for _, r := range b.roles {
				plan.reassign = append(plan.reassign, [2]string{localName(b.parent.id, r.name), localName(b.id, r.name)})
			}
		}
		dbs[i] = plan
	}
	record := func(db bool, name string) { s.recordLocal(p, db, name, true) }
	return func(ctx context.Context) error { return be.createBranch(ctx, roles, dbs, record) }
}

// dropDataOp returns the Postgres work of deleting b.
func (s *Server) dropDataOp(p *project, b *branch) func(context.Context) error {
	be := s.backend
	if be == nil {
		return nil
	}
	var dbs, roles []string
	for _, d := range b.dbs {
		dbs = append(dbs, localName(b.id, d.name))
	}
	for _, r := range b.roles {
		roles = append(roles, localName(b.id, r.name))
	}
	return func(ctx context.Context) error {
		if err := be.drop(ctx, dbs, roles); err != nil {
			return err
		}
		for _, d := range dbs {
			s.recordLocal(p, true, d, false)
		}
		for _, r := range roles {
			s.recordLocal(p, false, r, false)
		}
		return nil
	}
}

func (s *Server) branchReadyFn(b *branch) func(bool) {
	return func(ok bool) {
		now := s.nowLocked()
		if ok {
			b.state = BranchReady
		} else {
			b.failed = true
		}
		b.pending = ""
		b.stateChangedAt, b.updatedAt = now, now
	}
}

func (s *Server) endpointStartedFn(ep *endpoint) func(bool) {
	return func(ok bool) {
		now := s.nowLocked()
		ep.starting = false
		ep.pending = ""
		ep.updatedAt = now
		if ok && !ep.deleted {
			ep.state = EndpointActive
			ep.startedAt, ep.lastActive = now, now
		}
	}
}

func connectionURI(roleName, password string, ep *endpoint, dbName string) ConnectionURI {
	return ConnectionURI{
		ConnectionURI: uri(roleName, password, ep.host(), dbName),
		ConnectionParameters: ConnectionParameters{
			Database: dbName, Password: password, Role: roleName,
			Host: ep.host(), PoolerHost: ep.poolerHost(),
		},
	}
}

func uri(roleName, password, host, dbName string) string {
	u := url.URL{
		Scheme:   "postgresql",
		User:     url.UserPassword(roleName, password),
		Host:     host,
		Path:     "/" + dbName,
		RawQuery: "sslmode=require&channel_binding=require",
	}
	return u.String()
}

func (s *Server) hListProjects(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, e := intParam(q, "limit", 10, 1, 400)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	search := strings.ToLower(q.Get("search"))
	cursor := q.Get("cursor")
	// org_id and timeout are accepted and ignored: every project is listed.
	s.mu.Lock()
	var page []Project
	for _, id := range sortedKeys(s.mu.projects) {
		p := s.mu.projects[id]
		if cursor != "" && id <= cursor {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(p.name), search) && !strings.Contains(p.id, search) {
			continue
		}
		if len(page) == limit {
			break
		}
		page = append(page, p.wire())
	}
	s.mu.Unlock()
	next := cursor
	if len(page) > 0 {
		next = page[len(page)-1].ID
	}
	if page == nil {
		page = []Project{}
	}
	s.writeJSON(w, http.StatusOK, map[string]any{
		"projects":     page,
		"pagination":   map[string]string{"cursor": next},
		"applications": map[string]any{},
		"integrations": map[string]any{},
	})
}

func intParam(q url.Values, name string, def, lo, hi int) (int, *APIError) {
	v := q.Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, badRequest(fmt.Sprintf("%s must be an integer between %d and %d", name, lo, hi))
	}
	return n, nil
}

// projectLocked returns the live project named in r, or a 404.
func (s *Server) projectLocked(id string) (*project, *APIError) {
	p := s.mu.projects[id]
	if p == nil {
		return nil, notFound("project")
	}
	return p, nil
}

func (s *Server) branchLocked(p *project, id string) (*branch, *APIError) {
	b := p.branches[id]
	if b == nil {
		return nil, notFound("branch")
	}
	return b, nil
}

// pathBranchLocked returns the project and branch named by r's path.
// The caller holds s.mu.
func (s *Server) pathBranchLocked(r *http.Request) (*project, *branch, *APIError) {
	p, e := s.projectLocked(r.PathValue("project_id"))
	if e != nil {
		return nil, nil, e
	}
	b, e := s.branchLocked(p, r.PathValue("branch_id"))
	if e != nil {
		return nil, nil, e
	}
	return p, b, nil
}

// read runs f under s.mu and answers its value with 200, or its error.
func (s *Server) read(w http.ResponseWriter, r *http.Request, f func() (any, *APIError)) {
	s.mu.Lock()
	v, e := f()
	s.mu.Unlock()
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	s.writeJSON(w, http.StatusOK, v)
}

func (s *Server) hGetProject(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		pw := p.wire()
		pw.Owner = &ProjectOwner{Email: "neontest@example.com", Name: "neontest", BranchesLimit: s.cfg.branchLimit(), SubscriptionType: "free_v3"}
		return map[string]any{"project": pw}, nil
	})
}

func (s *Server) hDeleteProject(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		s.deleteProjectLocked(p)
		return map[string]any{"project": p.wire()}, nil
	})
}

// deleteProjectLocked removes p at once (it is not locked by running
// operations): its endpoints refuse connections, its queued operations are
// cancelled, and a hidden operation drops its Postgres objects after the
// one running now.
func (s *Server) deleteProjectLocked(p *project) {
	now := s.nowLocked()
	p.deleted = true
	delete(s.mu.projects, p.id)
	for _, ep := range p.endpoints {
		ep.deleted = true
		delete(s.mu.endpoints, ep.id)
		s.breakSessionsLocked(ep)
	}
	for _, op := range p.queue {
		if !op.terminal() && op.started.IsZero() {
			s.cancelOpLocked(op, now)
		}
	}
	cleanup := &operation{p: p, hidden: true, Operation: Operation{Action: "delete_project", Status: OpScheduling}}
	if be := s.backend; be != nil {
		cleanup.run = func(ctx context.Context) error {
			s.mu.Lock()
			dbs, roles := sortedKeys(p.localDBs), sortedKeys(p.localRoles)
			s.mu.Unlock()
			if err := be.drop(ctx, dbs, roles); err != nil {
				return err
			}
			s.mu.Lock()
			clear(p.localDBs)
			clear(p.localRoles)
			s.forgetLocked(p)
			s.mu.Unlock()
			return nil
		}
	} else {
		s.forgetLocked(p)
	}
	s.enqueueLocked(p, cleanup)
}

// forgetLocked drops a deleted project that owns nothing in the Backend
// from the cleanup list.
func (s *Server) forgetLocked(p *project) {
	s.mu.all = slices.DeleteFunc(s.mu.all, func(q *project) bool { return q == p })
}

// --- branches ---

func (s *Server) hCreateBranch(w http.ResponseWriter, r *http.Request) {
	var req branchCreateRequest
	if e := decodeBody(w, r, &req, true); e != nil {
		s.writeError(w, r, e)
		return
	}
	out, e := s.createBranch(r.PathValue("project_id"), req)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	if s.takeDrop() {
		s.hangUp(w)
		return
	}
	s.writeJSON(w, http.StatusCreated, out)
}

func (s *Server) createBranch(projectID string, req branchCreateRequest) (CreatedBranch, *APIError) {
	rb := req.Branch
	if rb.Name != "" {
		if e := checkName("branch name", rb.Name, 256); e != nil {
			return CreatedBranch{}, e
		}
	}
	if rb.ParentLSN != "" || rb.ParentTimestamp != "" {
		return CreatedBranch{}, badRequest("neontest: point-in-time branching (parent_lsn, parent_timestamp) is not supported by the fake")
	}
	switch rb.InitSource {
	case "", "parent-data":
	case "schema-only":
		return CreatedBranch{}, badRequest("neontest: init_source schema-only is not supported by the fake")
	default:
		return CreatedBranch{}, badRequest(fmt.Sprintf("invalid init_source %q", rb.InitSource))
	}
	readWrite := 0
	for _, e := range req.Endpoints {
		switch e.Type {
		case "read_write":
			readWrite++
		case "read_only":
		default:
			return CreatedBranch{}, badRequest(fmt.Sprintf("invalid endpoint type %q: want read_write or read_only", e.Type))
		}
	}
	if readWrite > 1 {
		return CreatedBranch{}, &APIError{Status: http.StatusConflict, Message: "a branch can have only one read_write endpoint"}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return CreatedBranch{}, &APIError{Status: http.StatusServiceUnavailable, Message: "server closed"}
	}
	p, e := s.projectLocked(projectID)
	if e != nil {
		return CreatedBranch{}, e
	}
	parent := p.defaultBranch
	if rb.ParentID != "" {
		if parent, e = s.branchLocked(p, rb.ParentID); e != nil {
			return CreatedBranch{}, e
		}
	}
	settings := make([]EndpointSettings, len(req.Endpoints))
	for i, ef := range req.Endpoints {
		if settings[i], e = applySettings(p.defaults, ef.AutoscalingLimitMinCU, ef.AutoscalingLimitMaxCU, ef.SuspendTimeoutSeconds); e != nil {
			return CreatedBranch{}, e
		}
	}
	if parent.failed {
		return CreatedBranch{}, &APIError{Status: http.StatusUnprocessableEntity, Message: "branch not ready yet"}
	}
	if rb.Name != "" {
		for _, b := range p.liveBranches() {
			if b.name == rb.Name {
				return CreatedBranch{}, &APIError{Status: http.StatusConflict, Message: fmt.Sprintf("branch already exists; branch_name:%q", rb.Name)}
			}
		}
	}
	if limit := s.cfg.branchLimit(); len(p.branches) >= limit {
		return CreatedBranch{}, &APIError{
			Status:  http.StatusUnprocessableEntity,
			Code:    "BRANCHES_LIMIT_EXCEEDED",
			Message: fmt.Sprintf("number of branches exceeds the limit of %d", limit),
		}
	}
	if p.busy() {
		return CreatedBranch{}, locked()
	}

	now := s.nowLocked()
	b := s.newBranchLocked(p, rb.Name, parent, now)
	b.protected = rb.Protected
	b.expiresAt = rb.ExpiresAt
	if len(req.AnnotationValue) > 0 {
		b.annotation = req.AnnotationValue
	}
	for _, pr := range parent.roles {
		r := &role{name: pr.name, password: pr.password, creds: pr.creds, protected: pr.protected, createdAt: pr.createdAt, updatedAt: pr.updatedAt}
		if parent.protected { // Neon gives a protected branch's children new passwords
			r.password = newPassword()
			if r.creds, e = credsOrError(r.password); e != nil {
				return CreatedBranch{}, e
			}
		}
		b.roles = append(b.roles, r)
	}
	for _, pd := range parent.dbs {
		s.mu.nextDBID++
		b.dbs = append(b.dbs, &database{id: s.mu.nextDBID, name: pd.name, owner: pd.owner, createdAt: pd.createdAt, updatedAt: pd.updatedAt})
	}
	var eps []*endpoint
	for i, ef := range req.Endpoints {
		eps = append(eps, s.newEndpointLocked(p, b, ef.Type, settings[i], now))
	}

	createOp := s.newOpLocked(p, "create_branch", b.id, "")
	createOp.run, createOp.done = s.branchDataOp(p, b), s.branchReadyFn(b)
	ops := []*operation{createOp}
	for _, ep := range eps {
		op := s.newOpLocked(p, "start_compute", b.id, ep.id)
		op.done = s.endpointStartedFn(ep)
		ops = append(ops, op)
	}
	s.enqueueLocked(p, ops...)

	out := CreatedBranch{Branch: b.wire(), Endpoints: []Endpoint{}}
	for _, ep := range eps {
		out.Endpoints = append(out.Endpoints, s.endpointWireLocked(ep))
	}
	for _, op := range ops {
		out.Operations = append(out.Operations, op.Operation)
	}
	for _, r := range b.roles {
		out.Roles = append(out.Roles, r.wire(b.id, false))
	}
	for _, d := range b.dbs {
		out.Databases = append(out.Databases, d.wire(b.id))
	}
	if len(eps) > 0 && len(b.roles) == 1 && len(b.dbs) == 1 {
		ep := b.readWrite()
		if ep == nil {
			ep = eps[0]
		}
		out.ConnectionURIs = []ConnectionURI{connectionURI(b.roles[0].name, b.roles[0].password, ep, b.dbs[0].name)}
	}
	return out, nil
}

func credsOrError(password string) (c scram.StoredCredentials, e *APIError) {
	c, err := scramCreds(password)
	if err != nil {
		return c, &APIError{Status: http.StatusInternalServerError, Message: err.Error()}
	}
	return c, nil
}

// branchSortKey is the key branches are listed by (sort_by), as a string
// that sorts like the key.
func branchSortKey(b *branch, by string) string {
	switch by {
	case "name":
		return b.name
	case "created_at":
		return fmt.Sprintf("%020d", b.createdAt.UnixNano())
	}
	return fmt.Sprintf("%020d", b.updatedAt.UnixNano())
}

type branchCursor struct {
	Key string `json:"k"`
	ID  string `json:"id"`
}

func (s *Server) hListBranches(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sortBy := q.Get("sort_by")
	switch sortBy {
	case "":
		sortBy = "updated_at"
	case "name", "created_at", "updated_at":
	default:
		s.writeError(w, r, badRequest("sort_by must be name, created_at or updated_at"))
		return
	}
	order := strings.ToLower(q.Get("sort_order"))
	switch order {
	case "":
		order = "desc"
	case "asc", "desc":
	default:
		s.writeError(w, r, badRequest("sort_order must be asc or desc"))
		return
	}
	limit, e := intParam(q, "limit", 0, 1, 10000)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	var after *branchCursor
	if c := q.Get("cursor"); c != "" {
		raw, err := base64.RawURLEncoding.DecodeString(c)
		after = &branchCursor{}
		if err != nil || json.Unmarshal(raw, after) != nil {
			s.writeError(w, r, badRequest("invalid cursor"))
			return
		}
	}
	search := strings.ToLower(q.Get("search"))
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		type item struct {
			b   *branch
			key string
		}
		var items []item
		for _, b := range p.liveBranches() {
			if search == "" || strings.Contains(strings.ToLower(b.name), search) || strings.Contains(b.id, search) {
				items = append(items, item{b, branchSortKey(b, sortBy)})
			}
		}
		less := func(a, b item) int {
			if c := strings.Compare(a.key, b.key); c != 0 {
				return c
			}
			return strings.Compare(a.b.id, b.b.id)
		}
		slices.SortFunc(items, func(a, b item) int {
			if order == "desc" {
				return less(b, a)
			}
			return less(a, b)
		})
		if after != nil {
			cur := item{&branch{id: after.ID}, after.Key}
			i := 0
			for i < len(items) {
				c := less(items[i], cur)
				if order == "desc" {
					c = -c
				}
				if c > 0 {
					break
				}
				i++
			}
			items = items[i:]
		}
		pagination := map[string]string{"sort_by": sortBy, "sort_order": strings.ToUpper(order)}
		if limit > 0 && len(items) > limit {
			items = items[:limit]
			last := items[limit-1]
			raw, _ := json.Marshal(branchCursor{Key: last.key, ID: last.b.id})
			pagination["next"] = base64.RawURLEncoding.EncodeToString(raw)
		}
		branches := make([]Branch, 0, len(items))
		annotations := map[string]any{}
		for _, it := range items {
			branches = append(branches, it.b.wire())
			if a := annotationWire(it.b); a != nil {
				annotations[it.b.id] = a
			}
		}
		return map[string]any{"branches": branches, "annotations": annotations, "pagination": pagination}, nil
	})
}

func annotationWire(b *branch) map[string]any {
	if b.annotation == nil {
		return nil
	}
	return map[string]any{
		"object":     map[string]string{"type": "console/branch", "id": b.id},
		"value":      b.annotation,
		"created_at": sec(b.createdAt),
		"updated_at": sec(b.createdAt),
	}
}

func (s *Server) hCountBranches(w http.ResponseWriter, r *http.Request) {
	search := strings.ToLower(r.URL.Query().Get("search"))
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		n := 0
		for _, b := range p.liveBranches() {
			if search == "" || strings.Contains(strings.ToLower(b.name), search) || strings.Contains(b.id, search) {
				n++
			}
		}
		return map[string]int{"count": n}, nil
	})
}

func (s *Server) hGetBranch(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, e := s.pathBranchLocked(r)
		if e != nil {
			return nil, e
		}
		out := map[string]any{"branch": b.wire()}
		if a := annotationWire(b); a != nil {
			out["annotation"] = a
		}
		return out, nil
	})
}

func (s *Server) hDeleteBranch(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out, status, e := s.deleteBranchLocked(r.PathValue("project_id"), r.PathValue("branch_id"))
	s.mu.Unlock()
	switch {
	case e != nil:
		s.writeError(w, r, e)
	case status == http.StatusNoContent:
		w.WriteHeader(http.StatusNoContent)
	default:
		s.writeJSON(w, status, out)
	}
}

func (s *Server) deleteBranchLocked(projectID, branchID string) (any, int, *APIError) {
	p, e := s.projectLocked(projectID)
	if e != nil {
		return nil, 0, e
	}
	b := p.branches[branchID]
	if b == nil {
		return nil, http.StatusNoContent, nil
	}
	refuse := func(msg string) (any, int, *APIError) {
		return nil, 0, &APIError{Status: http.StatusUnprocessableEntity, Message: msg}
	}
	switch {
	case b.isDefault:
		return refuse("cannot delete the project's default branch")
	case b.parent == nil:
		return refuse("cannot delete a root branch")
	case b.protected:
		return refuse("cannot delete a protected branch")
	case b.children > 0:
		return refuse("cannot delete a branch that has child branches; delete them first")
	}
	if p.busy() {
		return nil, 0, locked()
	}
	now := s.nowLocked()
	b.deleted = true
	b.pending = "storage_deleted"
	b.updatedAt = now
	delete(p.branches, b.id)
	b.parent.children--
	var ops []*operation
	for _, ep := range b.endpoints {
		ep.deleted = true
		ep.pending = EndpointIdle
		delete(s.mu.endpoints, ep.id)
		delete(p.endpoints, ep.id)
		s.breakSessionsLocked(ep) // computes are suspended at once
		op := s.newOpLocked(p, "suspend_compute", b.id, ep.id)
		op.done = func(bool) { ep.state, ep.pending, ep.suspendedAt = EndpointIdle, "", s.nowLocked() }
		ops = append(ops, op)
	}
	b.endpoints = nil
	drop := s.newOpLocked(p, "delete_timeline", b.id, "")
	drop.run = s.dropDataOp(p, b)
	ops = append(ops, drop)
	s.enqueueLocked(p, ops...)
	out := map[string]any{"branch": b.wire(), "operations": wireOps(ops)}
	return out, http.StatusOK, nil
}

func wireOps(ops []*operation) []Operation {
	out := make([]Operation, len(ops))
	for i, op := range ops {
		out[i] = op.Operation
	}
	return out
}

// --- endpoints ---

func (s *Server) hBranchEndpoints(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, e := s.pathBranchLocked(r)
		if e != nil {
			return nil, e
		}
		eps := []Endpoint{}
		for _, ep := range b.endpoints {
			eps = append(eps, s.endpointWireLocked(ep))
		}
		return map[string]any{"endpoints": eps}, nil
	})
}

func (s *Server) hListEndpoints(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		eps := []Endpoint{}
		for _, b := range p.liveBranches() {
			for _, ep := range b.endpoints {
				eps = append(eps, s.endpointWireLocked(ep))
			}
		}
		return map[string]any{"endpoints": eps}, nil
	})
}

func (s *Server) hGetEndpoint(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		ep := p.endpoints[r.PathValue("endpoint_id")]
		if ep == nil {
			return nil, notFound("endpoint")
		}
		return map[string]any{"endpoint": s.endpointWireLocked(ep)}, nil
	})
}

// --- roles, databases, passwords, connection URIs ---

func (s *Server) roleLocked(r *http.Request) (*project, *branch, *role, *APIError) {
	p, e := s.projectLocked(r.PathValue("project_id"))
	if e != nil {
		return nil, nil, nil, e
	}
	b, e := s.branchLocked(p, r.PathValue("branch_id"))
	if e != nil {
		return nil, nil, nil, e
	}
	rl := b.role(r.PathValue("role_name"))
	if rl == nil {
		return nil, nil, nil, notFound("role")
	}
	return p, b, rl, nil
}

func (s *Server) hListRoles(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, e := s.pathBranchLocked(r)
		if e != nil {
			return nil, e
		}
		roles := []Role{}
		for _, rl := range b.roles {
			roles = append(roles, rl.wire(b.id, false))
		}
		return map[string]any{"roles": roles}, nil
	})
}

func (s *Server) hGetRole(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, rl, e := s.roleLocked(r)
		if e != nil {
			return nil, e
		}
		return map[string]any{"role": rl.wire(b.id, false)}, nil
	})
}

func (s *Server) hRevealPassword(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, _, rl, e := s.roleLocked(r)
		if e != nil {
			return nil, e
		}
		if !p.storePasswords {
			return nil, &APIError{Status: http.StatusPreconditionFailed, Message: "passwords are not stored for this project (store_passwords is false)"}
		}
		return map[string]string{"password": rl.newest()}, nil
	})
}

func (s *Server) hResetPassword(w http.ResponseWriter, r *http.Request) {
	password := newPassword()
	creds, e := credsOrError(password)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	s.read(w, r, func() (any, *APIError) {
		p, b, rl, e := s.roleLocked(r)
		if e != nil {
			return nil, e
		}
		if p.busy() {
			return nil, locked()
		}
		rl.pending, rl.pendingCreds = password, creds
		epID := ""
		if ep := b.readWrite(); ep != nil {
			epID = ep.id
		}
		op := s.newOpLocked(p, "apply_config", b.id, epID)
		op.done = func(ok bool) {
			if ok && rl.pending == password {
				rl.password, rl.creds = password, creds
				rl.updatedAt = s.nowLocked()
				for _, ep := range b.endpoints { // Neon drops the compute's connections
					s.breakSessionsLocked(ep)
				}
			}
			if rl.pending == password {
				rl.pending = ""
			}
		}
		s.enqueueLocked(p, op)
		w := rl.wire(b.id, false)
		w.Password = password
		return map[string]any{"role": w, "operations": wireOps([]*operation{op})}, nil
	})
}

func (s *Server) hListDatabases(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, e := s.pathBranchLocked(r)
		if e != nil {
			return nil, e
		}
		dbs := []Database{}
		for _, d := range b.dbs {
			dbs = append(dbs, d.wire(b.id))
		}
		return map[string]any{"databases": dbs}, nil
	})
}

func (s *Server) hGetDatabase(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		_, b, e := s.pathBranchLocked(r)
		if e != nil {
			return nil, e
		}
		d := b.database(r.PathValue("database_name"))
		if d == nil {
			return nil, notFound("database")
		}
		return map[string]any{"database": d.wire(b.id)}, nil
	})
}

func (s *Server) hConnectionURI(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dbName, roleName := q.Get("database_name"), q.Get("role_name")
	if dbName == "" || roleName == "" {
		s.writeError(w, r, badRequest("database_name and role_name are required"))
		return
	}
	// Neon's own docs say pooled defaults to true; the spec does not say
	// (docs/neon-api.md §6, an open point in §12).
	pooled := true
	if v := q.Get("pooled"); v != "" {
		var err error
		if pooled, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, badRequest("pooled must be true or false"))
			return
		}
	}
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		b := p.defaultBranch
		if id := q.Get("branch_id"); id != "" {
			if b, e = s.branchLocked(p, id); e != nil {
				return nil, e
			}
		}
		ep := b.readWrite()
		if id := q.Get("endpoint_id"); id != "" {
			ep = p.endpoints[id]
			if ep != nil && ep.b != b {
				ep = nil
			}
		}
		if ep == nil {
			return nil, notFound("endpoint")
		}
		rl := b.role(roleName)
		if rl == nil {
			return nil, notFound("role")
		}
		if b.database(dbName) == nil {
			return nil, notFound("database")
		}
		if !p.storePasswords {
			return nil, &APIError{Status: http.StatusPreconditionFailed, Message: "passwords are not stored for this project (store_passwords is false)"}
		}
		host := ep.host()
		if pooled {
			host = ep.poolerHost()
		}
		return map[string]string{"uri": uri(rl.name, rl.password, host, dbName)}, nil
	})
}

// --- operations ---

// opCursorLayout formats operation cursors (microseconds, as Neon's).
const opCursorLayout = "2006-01-02T15:04:05.000000Z07:00"

func (s *Server) hListOperations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, e := intParam(q, "limit", 0, 1, 1000)
	if e != nil {
		s.writeError(w, r, e)
		return
	}
	var before time.Time
	if c := q.Get("cursor"); c != "" {
		t, err := time.Parse(time.RFC3339Nano, c)
		if err != nil {
			s.writeError(w, r, badRequest("invalid cursor"))
			return
		}
		before = t
	}
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		ops := []Operation{}
		var last time.Time
		for i := len(p.ops) - 1; i >= 0; i-- { // newest first
			op := p.ops[i]
			if !before.IsZero() && !op.created.Before(before) {
				continue
			}
			if limit > 0 && len(ops) == limit {
				break
			}
			ops = append(ops, op.Operation)
			last = op.created
		}
		out := map[string]any{"operations": ops}
		if len(ops) > 0 {
			out["pagination"] = map[string]string{"cursor": last.Format(opCursorLayout)}
		}
		return out, nil
	})
}

func (s *Server) hGetOperation(w http.ResponseWriter, r *http.Request) {
	s.read(w, r, func() (any, *APIError) {
		p, e := s.projectLocked(r.PathValue("project_id"))
		if e != nil {
			return nil, e
		}
		op := p.opsByID[r.PathValue("operation_id")]
		if op == nil {
			return nil, notFound("operation")
		}
		return map[string]any{"operation": op.Operation}, nil
	})
}
