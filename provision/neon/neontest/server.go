package neontest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/xdg-go/scram"
)

// Defaults for the zero Config.
const (
	DefaultRegion       = "aws-us-east-2"
	DefaultBranchLimit  = 10
	DefaultProjectLimit = 100
	DefaultOpDelay      = 100 * time.Millisecond
)

const (
	// cleanupTimeout bounds the dropping of every database and role in Close.
	cleanupTimeout = 30 * time.Second
	// maxRequestLog bounds the request log; the oldest half is dropped when
	// it is full.
	maxRequestLog = 100_000
)

// regions are the region ids Neon documents (docs/neon-api.md §3.5). The
// compute proxy's certificate covers all of them.
var regions = []string{
	"aws-us-east-1", "aws-us-east-2", "aws-us-west-2", "aws-eu-central-1", "aws-eu-west-2",
	"aws-ap-southeast-1", "aws-ap-southeast-2", "aws-sa-east-1",
	"azure-eastus2", "azure-westus3", "azure-gwc",
}

// regionDomain turns "aws-us-east-2" into "us-east-2.aws.neon.tech".
func regionDomain(region string) string {
	platform, rest, _ := strings.Cut(region, "-")
	return rest + "." + platform + ".neon.tech"
}

// proxyHost is the cell domain endpoints of region live under, e.g.
// "c-2.us-east-2.aws.neon.tech".
func proxyHost(region string) string { return "c-2." + regionDomain(region) }

// Config configures a Server. The zero value works: any non-empty bearer
// token, region aws-us-east-2, 10 branches per project, 100 projects,
// operations of about 100ms each, no Postgres behind the API.
type Config struct {
	// APIKey is the bearer token every request must carry. Empty means any
	// non-empty token is accepted. Secret: never logged.
	APIKey string
	// Region is the region of projects created without region_id. Empty
	// means "aws-us-east-2", whose hosts are
	// <endpoint>.c-2.us-east-2.aws.neon.tech. Must be a region Neon
	// documents (aws-us-east-1, aws-eu-central-1, azure-eastus2, ...).
	Region string
	// BranchLimit is the number of branches a project may have, its default
	// branch included. Zero or negative means 10 (the Free and Launch plans).
	BranchLimit int
	// ProjectLimit is the number of projects the account may have. Zero or
	// negative means 100.
	ProjectLimit int
	// OpDelay is how long each operation runs before it finishes (or as long
	// as its Postgres work takes, if longer). Operations of one request run
	// one after the other, the later ones "scheduling" meanwhile. Zero or
	// negative means 100ms; tests use about 20ms.
	OpDelay time.Duration
	// Backend is the Postgres server behind branches: each branch's
	// databases and roles are real, and the compute proxy (PGAddr) relays
	// sessions to them. Nil means API only: operations change state but
	// nothing can be connected to. The caller owns it and closes it after
	// Server.Close; one Backend may serve several Servers.
	Backend *Backend
	// HTTPAddr is where the API listens. Empty means 127.0.0.1:0.
	HTTPAddr string
	// ComputeAddr is where the compute proxy listens. Empty means
	// 127.0.0.1:0.
	ComputeAddr string
	// Log receives request and connection logs. Nil discards them.
	Log *slog.Logger
}

// String describes c with the API key masked, so a Config is safe to log.
func (c Config) String() string {
	key := "any"
	if c.APIKey != "" {
		key = "set"
	}
	return fmt.Sprintf("neontest.Config{APIKey: %s, Region: %s, BranchLimit: %d, ProjectLimit: %d, OpDelay: %s, Backend: %t}",
		key, c.region(), c.branchLimit(), c.projectLimit(), c.opDelay(), c.Backend != nil)
}

// LogValue implements slog.LogValuer without the API key.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Bool("api_key_set", c.APIKey != ""),
		slog.String("region", c.region()),
		slog.Int("branch_limit", c.branchLimit()),
		slog.Int("project_limit", c.projectLimit()),
		slog.Duration("op_delay", c.opDelay()),
		slog.Bool("backend", c.Backend != nil),
	)
}

func (c *Config) region() string {
	if c.Region == "" {
		return DefaultRegion
	}
	return c.Region
}

func (c *Config) branchLimit() int {
	if c.BranchLimit <= 0 {
		return DefaultBranchLimit
	}
	return c.BranchLimit
}

func (c *Config) projectLimit() int {
	if c.ProjectLimit <= 0 {
		return DefaultProjectLimit
	}
	return c.ProjectLimit
}

func (c *Config) opDelay() time.Duration {
	if c.OpDelay <= 0 {
		return DefaultOpDelay
	}
	return c.OpDelay
}

func (c *Config) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func listenAddr(a string) string {
	if a == "" {
		return "127.0.0.1:0"
	}
	return a
}

// Request is one entry of the request log (Server.Requests).
type Request struct {
	Method string
	// Path is relative to URL(), e.g. "/projects/x/branches".
	Path string
	// Query is the raw query string, without '?'.
	Query string
	// Time is when the request arrived.
	Time time.Time
	// Status is the HTTP status answered, or 0 if the fake hung up without
	// answering (DropAfterCreate).
	Status int
}

// Server is an in-process fake of the Neon API v2 plus a compute proxy that
// relays Postgres sessions to a Backend. Create it with NewServer and stop
// it with Close. All methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	backend *Backend
	orgID   string

	http   *httptest.Server
	pgLn   net.Listener
	certs  *certs
	tlsCfg *tls.Config

	ctx    context.Context // ends when Close starts
	cancel context.CancelFunc
	wg     sync.WaitGroup // op workers, the accept loop, compute sessions
	once   sync.Once

	faults struct {
		sync.Mutex
		rules  []*failRule
		drops  int
		failOp map[string]int // action -> how many of its next ops fail
	}
	reqLog struct {
		sync.Mutex
		reqs []Request
	}

	mu struct {
		sync.Mutex
		projects  map[string]*project   // live projects by id
		all       []*project            // every project ever created, for Close's cleanup
		endpoints map[string]*endpoint  // live endpoints by id
		conns     map[net.Conn]struct{} // compute proxy client connections
		sessions  int                   // relayed compute sessions
		changed   chan struct{}         // closed and replaced on every state change
		closed    bool
		nextDBID  int64
		nextLSN   uint64
		nextBatch int64
		lastTime  time.Time // last precise timestamp handed out
	}
}

// NewServer starts the API on an HTTP listener (an httptest.Server) and the
// compute proxy on a TCP listener, both on 127.0.0.1 with random ports
// unless Config says otherwise. ctx bounds the start-up only: the server
// runs until Close.
func NewServer(ctx context.Context, cfg Config) (*Server, error) {
	if !slices.Contains(regions, cfg.region()) {
		return nil, fmt.Errorf("neontest: unknown region %q (want one of %s)", cfg.region(), strings.Join(regions, ", "))
	}
	var names []string
	for _, r := range regions {
		names = append(names, "*."+proxyHost(r), "*."+regionDomain(r))
	}
	c, err := newCerts(names)
	if err != nil {
		return nil, fmt.Errorf("neontest: %w", err)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.logger(),
		backend: cfg.Backend,
		orgID:   newOrgID(),
		certs:   c,
	}
	s.tlsCfg = &tls.Config{
		Certificates: []tls.Certificate{c.leaf},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"postgresql"}, // for direct TLS (sslnegotiation=direct)
	}
	s.faults.failOp = map[string]int{}
	s.mu.projects = map[string]*project{}
	s.mu.endpoints = map[string]*endpoint{}
	s.mu.conns = map[net.Conn]struct{}{}
	s.mu.changed = make(chan struct{})
	s.mu.nextDBID = 6_600_000 + int64(time.Now().UnixMilli()%100_000)
	s.mu.nextLSN = 0x1A7F730

	var lc net.ListenConfig
	httpLn, err := lc.Listen(ctx, "tcp", listenAddr(cfg.HTTPAddr))
	if err != nil {
		return nil, fmt.Errorf("neontest: listen for the API: %w", err)
	}
	pgLn, err := lc.Listen(ctx, "tcp", listenAddr(cfg.ComputeAddr))
	if err != nil {
		_ = httpLn.Close()
		return nil, fmt.Errorf("neontest: listen for the compute proxy: %w", err)
	}
	s.pgLn = pgLn
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.http = &httptest.Server{
		Listener: httpLn,
		Config: &http.Server{
			Handler:           s.handler(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		},
	}
	s.http.Start()
	s.wg.Go(s.acceptCompute)
	s.log.Info("neon fake started", "api", s.URL(), "compute", s.PGAddr(), "region", cfg.region())
	return s, nil
}

// URL returns the API's base URL, ending in /api/v2 (the analogue of
// https://console.neon.tech/api/v2).
func (s *Server) URL() string { return s.http.URL + "/api/v2" }

// PGAddr returns the compute proxy's address, 127.0.0.1:port. Every
// endpoint host (<ep>.c-2.<region>.aws.neon.tech and its -pooler twin) is
// served here; the proxy tells them apart by TLS SNI.
func (s *Server) PGAddr() string { return s.pgLn.Addr().String() }

// OrgID returns the organisation id projects get when created without
// org_id.
func (s *Server) OrgID() string { return s.orgID }

// Dialer returns a dial function that connects to PGAddr whatever address
// it is asked for (e.g. ep-x-pooler.c-2.us-east-2.aws.neon.tech:5432), for
// pgconn.Config.DialFunc or the router's upstream dial override. pgconn
// resolves host names before it dials, so also set Config.LookupFunc to
// LookupFunc(); keep TLS ServerName the endpoint host, so SNI routes.
func (s *Server) Dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", s.PGAddr())
	}
}

// LookupFunc returns a resolver (for pgconn.Config.LookupFunc) that answers
// every host name with itself, so that the unresolvable *.neon.tech names
// reach Dialer unchanged.
func (s *Server) LookupFunc() func(ctx context.Context, host string) ([]string, error) {
	return func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
}

// CAPool returns a pool holding the CA that signed the compute proxy's
// certificate (generated by NewServer, ECDSA P-256).
func (s *Server) CAPool() *x509.CertPool { return s.certs.pool.Clone() }

// CACertPEM returns the compute proxy's CA certificate, PEM encoded, e.g.
// for a sslrootcert file.
func (s *Server) CACertPEM() []byte { return slices.Clone(s.certs.caPEM) }

// ClientTLSConfig returns a TLS config that verifies the compute proxy as
// serverName (the endpoint host the client connects to, which is also the
// SNI the proxy routes by): sslmode=verify-full.
func (s *Server) ClientTLSConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: s.certs.pool.Clone(), ServerName: serverName, MinVersion: tls.VersionTLS12}
}

// Close stops the API and the compute proxy, breaks every relayed session,
// waits for running operations, and then drops every database and role the
// server created in its Backend (state lives in memory only, so nothing
// would find them again). Idempotent.
func (s *Server) Close() {
	s.once.Do(func() {
		s.cancel()
		s.http.Close() // waits for handlers in flight
		_ = s.pgLn.Close()
		s.mu.Lock()
		s.mu.closed = true
		conns := make([]net.Conn, 0, len(s.mu.conns))
		for c := range s.mu.conns {
			conns = append(conns, c)
		}
		for _, ep := range s.mu.endpoints {
			s.breakSessionsLocked(ep)
		}
		s.notifyLocked()
		s.mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		s.wg.Wait()
		s.dropAll()
		s.log.Info("neon fake stopped")
	})
}

// dropAll drops every database and role any project of s still has.
func (s *Server) dropAll() {
	if s.backend == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	s.mu.Lock()
	var dbs, roles []string
	for _, p := range s.mu.all {
		dbs = append(dbs, sortedKeys(p.localDBs)...)
		roles = append(roles, sortedKeys(p.localRoles)...)
	}
	s.mu.Unlock()
	if err := s.backend.drop(ctx, dbs, roles); err != nil {
		s.log.Warn("neon fake: cleanup failed", "err", err)
	}
}

// FailNext makes the next n requests matching method and pathPattern
// answer status with a JSON error body (for 524, Cloudflare's HTML page),
// doing nothing else. method "" or "*" matches any method. pathPattern is
// relative to URL() (a leading "/api/v2" is accepted too); a segment "*"
// or "{name}" matches any one segment, e.g. "/projects/{project_id}/branches".
// Rules are tried in the order they were added.
func (s *Server) FailNext(method, pathPattern string, status int, n int) {
	if n <= 0 {
		return
	}
	s.faults.Lock()
	defer s.faults.Unlock()
	s.faults.rules = append(s.faults.rules, &failRule{
		method: strings.ToUpper(method),
		segs:   splitPath(strings.TrimPrefix(pathPattern, "/api/v2")),
		status: status,
		n:      n,
	})
}

// DropAfterCreate makes the next n successful POST /projects or POST
// /projects/{id}/branches requests create their object (with its
// operations) and then hang up without answering, as a timed-out request
// would look to a client.
func (s *Server) DropAfterCreate(n int) {
	s.faults.Lock()
	defer s.faults.Unlock()
	s.faults.drops += n
}

// FailNextOperation makes the next operation created with this action
// (create_timeline, create_branch, start_compute, suspend_compute,
// delete_timeline, apply_config) end "failed" with an error string,
// without doing its work; the later operations of the same request end
// "cancelled". A failed create_timeline or create_branch leaves the branch
// in state init (a further branch from it gets 422 "branch not ready yet");
// a failed start_compute leaves the endpoint in init, refusing connections.
func (s *Server) FailNextOperation(action string) {
	s.faults.Lock()
	defer s.faults.Unlock()
	s.faults.failOp[action]++
}

// Requests returns a copy of the log of every API request so far, in
// arrival order (the last 50,000 to 100,000 of them on a long-lived
// server).
func (s *Server) Requests() []Request {
	s.reqLog.Lock()
	defer s.reqLog.Unlock()
	return slices.Clone(s.reqLog.reqs)
}

// Sessions returns how many Postgres sessions the compute proxy is
// relaying now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.sessions
}

// Projects returns the live projects, sorted by id.
func (s *Server) Projects() []Project {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Project, 0, len(s.mu.projects))
	for _, id := range sortedKeys(s.mu.projects) {
		out = append(out, s.mu.projects[id].wire())
	}
	return out
}

// Branches returns the live branches of a project in creation order, or
// nil if there is no such project.
func (s *Server) Branches(projectID string) []Branch {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.mu.projects[projectID]
	if p == nil {
		return nil
	}
	out := make([]Branch, 0, len(p.branches))
	for _, b := range p.liveBranches() {
		out = append(out, b.wire())
	}
	return out
}

// Endpoints returns the live endpoints of a project in creation order, or
// nil if there is no such project.
func (s *Server) Endpoints(projectID string) []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.mu.projects[projectID]
	if p == nil {
		return nil
	}
	var out []Endpoint
	for _, b := range p.liveBranches() {
		for _, ep := range b.endpoints {
			out = append(out, s.endpointWireLocked(ep))
		}
	}
	return out
}

// Operations returns every operation of a project, oldest first, or nil if
// there is no such project.
func (s *Server) Operations(projectID string) []Operation {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.mu.projects[projectID]
	if p == nil {
		return nil
	}
	out := make([]Operation, len(p.ops))
	for i, op := range p.ops {
		out[i] = op.Operation
	}
	return out
}

// CreateProject creates a project named name (with the defaults of POST
// /projects: branch main, role neondb_owner, database neondb, one
// read_write endpoint) through the same code as the API, and waits until
// its operations have finished. The answer has the final states.
func (s *Server) CreateProject(ctx context.Context, name string) (CreatedProject, error) {
	out, apiErr := s.createProject(projectCreateRequest{Project: &projectCreateFields{Name: &name}})
	if apiErr != nil {
		return CreatedProject{}, apiErr
	}
	if err := s.waitOps(ctx, out.Project.ID, out.Operations); err != nil {
		return CreatedProject{}, err
	}
	s.refresh(&out.Branch, out.Endpoints, out.Operations)
	return out, nil
}

// CreateBranch creates a branch named name (empty: named after its id)
// from the project's default branch, with one read_write endpoint, through
// the same code as the API, and waits until its operations have finished.
// It fails with the API's error (e.g. 423 while the project has running
// operations, 409, 422).
func (s *Server) CreateBranch(ctx context.Context, projectID, name string) (CreatedBranch, error) {
	req := branchCreateRequest{Endpoints: []endpointCreateFields{{Type: "read_write"}}}
	req.Branch.Name = name
	out, apiErr := s.createBranch(projectID, req)
	if apiErr != nil {
		return CreatedBranch{}, apiErr
	}
	if err := s.waitOps(ctx, projectID, out.Operations); err != nil {
		return CreatedBranch{}, err
	}
	s.refresh(&out.Branch, out.Endpoints, out.Operations)
	return out, nil
}

// WaitIdle blocks until the project has no unfinished operation, or ctx
// ends.
func (s *Server) WaitIdle(ctx context.Context, projectID string) error {
	return s.waitFor(ctx, func() bool {
		p := s.mu.projects[projectID]
		return p == nil || !p.busy()
	})
}

// APIError is an error answer of the API, also returned by the Go helpers.
type APIError struct {
	Status    int    `json:"-"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("neontest: %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("neontest: %d: %s", e.Status, e.Message)
}

// ErrOperationFailed is returned by the helpers when an operation they
// waited for ended failed or cancelled.
var ErrOperationFailed = errors.New("neontest: operation failed")

// waitOps waits until every op in ops is terminal.
func (s *Server) waitOps(ctx context.Context, projectID string, ops []Operation) error {
	var failed *Operation
	err := s.waitFor(ctx, func() bool {
		for _, want := range ops {
			op := s.findOpLocked(projectID, want.ID)
			if op == nil {
				continue
			}
			switch op.Status {
			case OpScheduling, OpRunning:
				return false
			case OpFailed, OpCancelled:
				o := op.Operation
				failed = &o
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	if failed != nil {
		return fmt.Errorf("%w: %s %s: %s", ErrOperationFailed, failed.Action, failed.Status, failed.Error)
	}
	return nil
}

// refresh updates the states in a create answer after its ops finished.
func (s *Server) refresh(b *Branch, eps []Endpoint, ops []Operation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.mu.projects[b.ProjectID]
	if p == nil {
		return
	}
	if br := p.branches[b.ID]; br != nil {
		*b = br.wire()
	}
	for i := range eps {
		if ep := p.endpoints[eps[i].ID]; ep != nil {
			eps[i] = s.endpointWireLocked(ep)
		}
	}
	for i := range ops {
		if op := s.findOpLocked(p.id, ops[i].ID); op != nil {
			ops[i] = op.Operation
		}
	}
}

// waitFor blocks until cond (called with s.mu held) is true, ctx ends or
// the server closes.
func (s *Server) waitFor(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		ch := s.mu.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return errors.New("neontest: server closed")
		}
	}
}

// notifyLocked wakes every waitFor. Caller holds s.mu.
func (s *Server) notifyLocked() {
	close(s.mu.changed)
	s.mu.changed = make(chan struct{})
}

// nowLocked returns the current time, strictly after any earlier result
// (operation cursors and sort orders rely on it). Caller holds s.mu.
func (s *Server) nowLocked() time.Time {
	t := time.Now().UTC().Truncate(time.Microsecond)
	if !t.After(s.mu.lastTime) {
		t = s.mu.lastTime.Add(time.Microsecond)
	}
	s.mu.lastTime = t
	return t
}

// scramCreds derives the SCRAM-SHA-256 credentials the compute proxy
// checks a password against (4096 iterations, random salt).
func scramCreds(password string) (scram.StoredCredentials, error) {
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	return cl.GetStoredCredentialsWithError(scram.KeyFactors{Salt: randString(mixedAlnum, 16), Iters: 4096})
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
