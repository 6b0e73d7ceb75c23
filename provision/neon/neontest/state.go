package neontest

import (
	"context"
	"maps"
	"net"
	"time"

	"github.com/xdg-go/scram"
)

// The fake's state. Everything here is guarded by Server.mu; Postgres work
// (Backend) runs outside it, in operations.

type project struct {
	id, name, regionID, orgID string
	provisioner               string
	pgVersion                 int
	storePasswords            bool
	historyRetention          int64
	defaults                  EndpointSettings
	settings                  map[string]any
	createdAt, updatedAt      time.Time

	defaultBranch *branch
	branches      map[string]*branch   // live branches by id
	order         []*branch            // every branch, in creation order
	endpoints     map[string]*endpoint // live endpoints by id
	ops           []*operation         // visible operations, oldest first
	opsByID       map[string]*operation
	queue         []*operation // unfinished operations (visible or not), FIFO
	working       bool         // a runOps goroutine serves queue
	deleted       bool

	// localDBs and localRoles are the Backend objects that exist for this
	// project (added as operations create them, removed as they drop them),
	// so that deleting the project or closing the server can drop them.
	localDBs   map[string]bool
	localRoles map[string]bool
}

// busy reports whether an operation of p is unfinished: mutating calls then
// answer 423.
func (p *project) busy() bool {
	for _, op := range p.queue {
		if !op.hidden && !op.terminal() {
			return true
		}
	}
	return false
}

func (p *project) liveBranches() []*branch {
	var out []*branch
	for _, b := range p.order {
		if !b.deleted {
			out = append(out, b)
		}
	}
	return out
}

func (p *project) proxyHost() string { return proxyHost(p.regionID) }

func (p *project) wire() Project {
	d := p.defaults
	d.PGSettings = maps.Clone(d.PGSettings)
	return Project{
		ID:                          p.id,
		PlatformID:                  platformOf(p.regionID),
		RegionID:                    p.regionID,
		Name:                        p.name,
		Provisioner:                 p.provisioner,
		DefaultEndpointSettings:     d,
		Settings:                    maps.Clone(p.settings),
		PGVersion:                   p.pgVersion,
		ProxyHost:                   p.proxyHost(),
		BranchLogicalSizeLimit:      512,
		BranchLogicalSizeLimitBytes: 512 << 20,
		StorePasswords:              p.storePasswords,
		CreationSource:              "console",
		HistoryRetentionSeconds:     p.historyRetention,
		CreatedAt:                   sec(p.createdAt),
		UpdatedAt:                   sec(p.updatedAt),
		ConsumptionPeriodStart:      time.Date(p.createdAt.Year(), p.createdAt.Month(), 1, 0, 0, 0, 0, time.UTC),
		ConsumptionPeriodEnd:        time.Time{},
		OwnerID:                     p.orgID,
		OrgID:                       p.orgID,
	}
}

func platformOf(region string) string {
	for i := range region {
		if region[i] == '-' {
			return region[:i]
		}
	}
	return region
}

type branch struct {
	p                    *project
	id, name             string
	parent               *branch
	parentLSN            string
	parentTime           time.Time
	isDefault, protected bool
	state, pending       string
	failed               bool // its creation failed: it never becomes ready
	stateChangedAt       time.Time
	createdAt, updatedAt time.Time
	expiresAt            *time.Time
	roles                []*role
	dbs                  []*database
	endpoints            []*endpoint // live endpoints
	children             int         // live child branches
	annotation           map[string]string
	deleted              bool
}

func (b *branch) role(name string) *role {
	for _, r := range b.roles {
		if r.name == name {
			return r
		}
	}
	return nil
}

func (b *branch) database(name string) *database {
	for _, d := range b.dbs {
		if d.name == name {
			return d
		}
	}
	return nil
}

func (b *branch) readWrite() *endpoint {
	for _, ep := range b.endpoints {
		if ep.typ == "read_write" {
			return ep
		}
	}
	return nil
}

func (b *branch) wire() Branch {
	w := Branch{
		ID:             b.id,
		ProjectID:      b.p.id,
		ParentLSN:      b.parentLSN,
		Name:           b.name,
		CurrentState:   b.state,
		PendingState:   b.pending,
		StateChangedAt: sec(b.stateChangedAt),
		LogicalSize:    30 << 20,
		CreationSource: "console",
		Primary:        b.isDefault,
		Default:        b.isDefault,
		Protected:      b.protected,
		InitSource:     "parent-data",
		ExpiresAt:      b.expiresAt,
		CreatedAt:      sec(b.createdAt),
		UpdatedAt:      sec(b.updatedAt),
	}
	if b.parent != nil {
		w.ParentID = b.parent.id
		t := sec(b.parentTime)
		w.ParentTimestamp = &t
	}
	return w
}

type role struct {
	name                 string
	password             string // works now
	pending              string // set by reset_password, works once its operation finishes
	creds                scram.StoredCredentials
	pendingCreds         scram.StoredCredentials
	protected            bool
	createdAt, updatedAt time.Time
}

func (r *role) wire(branchID string, withPassword bool) Role {
	w := Role{BranchID: branchID, Name: r.name, Protected: r.protected, CreatedAt: sec(r.createdAt), UpdatedAt: sec(r.updatedAt)}
	if withPassword {
		w.Password = r.newest()
	}
	return w
}

// newest is the password reveal_password shows: the pending one, if a reset
// is in flight.
func (r *role) newest() string {
	if r.pending != "" {
		return r.pending
	}
	return r.password
}

type database struct {
	id                   int64
	name, owner          string
	createdAt, updatedAt time.Time
}

func (d *database) wire(branchID string) Database {
	return Database{ID: d.id, BranchID: branchID, Name: d.name, OwnerName: d.owner, CreatedAt: sec(d.createdAt), UpdatedAt: sec(d.updatedAt)}
}

type endpoint struct {
	p                    *project
	b                    *branch
	id, typ              string
	state, pending       string
	starting             bool // a start_compute operation is queued or running
	minCU, maxCU         float64
	suspend              int64 // suspend_timeout_seconds as given: 0 = 300s, -1 = never
	provisioner          string
	createdAt, updatedAt time.Time
	lastActive           time.Time
	startedAt            time.Time
	suspendedAt          time.Time
	sessions             map[*session]struct{}
	deleted              bool
}

func (ep *endpoint) host() string       { return ep.id + "." + ep.p.proxyHost() }
func (ep *endpoint) poolerHost() string { return ep.id + "-pooler." + ep.p.proxyHost() }

// suspendAfter is how long an endpoint without sessions stays active; 0
// means never.
func (ep *endpoint) suspendAfter() time.Duration {
	switch {
	case ep.suspend < 0:
		return 0
	case ep.suspend == 0:
		return 300 * time.Second
	}
	return time.Duration(ep.suspend) * time.Second
}

// refreshLocked applies scale to zero lazily: an active endpoint without
// sessions for its suspend timeout is idle.
func (ep *endpoint) refreshLocked(now time.Time) {
	after := ep.suspendAfter()
	if ep.state != EndpointActive || len(ep.sessions) > 0 || after == 0 {
		return
	}
	if at := ep.lastActive.Add(after); !now.Before(at) {
		ep.state = EndpointIdle
		ep.suspendedAt = at
		ep.updatedAt = at
	}
}

func (s *Server) endpointWireLocked(ep *endpoint) Endpoint {
	now := s.nowLocked()
	ep.refreshLocked(now)
	w := Endpoint{
		Host:                  ep.host(),
		ID:                    ep.id,
		ProjectID:             ep.p.id,
		BranchID:              ep.b.id,
		AutoscalingLimitMinCU: ep.minCU,
		AutoscalingLimitMaxCU: ep.maxCU,
		RegionID:              ep.p.regionID,
		Type:                  ep.typ,
		CurrentState:          ep.state,
		PendingState:          ep.pending,
		Settings:              map[string]any{},
		PoolerMode:            "transaction",
		PasswordlessAccess:    true,
		CreationSource:        "console",
		CreatedAt:             sec(ep.createdAt),
		UpdatedAt:             sec(ep.updatedAt),
		ProxyHost:             ep.p.proxyHost(),
		SuspendTimeoutSeconds: ep.suspend,
		Provisioner:           ep.provisioner,
	}
	if !ep.lastActive.IsZero() {
		t := sec(ep.lastActive)
		w.LastActive = &t
	}
	if !ep.startedAt.IsZero() {
		t := sec(ep.startedAt)
		w.StartedAt = &t
	}
	if !ep.suspendedAt.IsZero() {
		t := sec(ep.suspendedAt)
		w.SuspendedAt = &t
	}
	return w
}

// session is one relayed compute connection.
type session struct {
	client, server net.Conn
}

// breakSessionsLocked closes every session of ep (the compute went away).
func (s *Server) breakSessionsLocked(ep *endpoint) {
	for sess := range ep.sessions {
		_ = sess.client.Close()
		_ = sess.server.Close()
	}
}

type operation struct {
	Operation
	p       *project
	batch   int64 // operations of one request share it
	hidden  bool  // internal work (project cleanup): not listed, does not lock
	fail    bool  // FailNextOperation: fail without doing the work
	started time.Time
	created time.Time // precise, for ordering and cursors

	run  func(ctx context.Context) error // Postgres work, outside s.mu; nil: none
	done func(ok bool)                   // state transition, under s.mu; nil: none
}

func (op *operation) terminal() bool {
	switch op.Status {
	case OpScheduling, OpRunning:
		return false
	}
	return true
}

func (s *Server) findOpLocked(projectID, opID string) *operation {
	p := s.mu.projects[projectID]
	if p == nil {
		return nil
	}
	return p.opsByID[opID]
}

// sec truncates t to the second precision Neon's timestamps have.
func sec(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }
