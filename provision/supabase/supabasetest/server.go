package supabasetest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/localca"
)

// Config configures a Server.
type Config struct {
	// AdminDSN is a superuser connection string of the local Postgres
	// server that holds the projects' databases. Required.
	AdminDSN string
	// Token is the access token the API accepts. Empty accepts any
	// non-empty Bearer token.
	Token string
	// CreateDelay is how long a new project stays COMING_UP. Zero means
	// none (ACTIVE_HEALTHY on the first poll).
	CreateDelay time.Duration
	// RateLimit is the requests per minute per scope (§8). Zero means 120;
	// negative means no limit.
	RateLimit int
	// Log receives debug lines. Nil means none.
	Log *slog.Logger
}

// Project is the fake's view of one project.
type Project struct {
	Ref, Name, OrganizationID, Region, Status string
	CreatedAt                                 time.Time
}

type project struct {
	ref, name, org, region string
	created                time.Time
	removed                bool
}

// Server is the fake API and pooler. Safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	admin  *pgxpool.Pool
	pgAddr string // the local Postgres server, host:port

	apiLn, poolLn net.Listener
	httpSrv       *http.Server
	ca            *localca.CA
	tlsCfg        *tls.Config
	certs         sync.Map // direct host -> *tls.Certificate

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		projects map[string]*project // guarded by mu; by ref
		order    []string            // refs in creation order
		failNext []int
		loseNext map[string]int // project name -> creates whose answer is lost
		calls    map[string]int
		windows  map[string]*window
		conns    map[net.Conn]struct{}
		closed   bool
	}
}

type window struct {
	start time.Time
	n     int
}

// NewServer starts the API and the pooler.
func NewServer(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.AdminDSN == "" {
		return nil, errors.New("supabasetest: AdminDSN is empty")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pc, err := pgxpool.ParseConfig(cfg.AdminDSN)
	if err != nil {
		return nil, fmt.Errorf("supabasetest: admin DSN: %w", err)
	}
	pc.MaxConns = 4
	admin, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("supabasetest: %w", err)
	}
	ca, err := localca.New()
	if err != nil {
		admin.Close()
		return nil, err
	}
	leaf, err := ca.Issue("*.pooler.supabase.com", "localhost", "127.0.0.1")
	if err != nil {
		admin.Close()
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, admin: admin, ca: ca,
		pgAddr: net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))),
	}
	s.tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"postgresql"}, GetCertificate: s.certFor(leaf.TLS)}
	s.mu.projects = make(map[string]*project)
	s.mu.loseNext = make(map[string]int)
	s.mu.calls = make(map[string]int)
	s.mu.windows = make(map[string]*window)
	s.mu.conns = make(map[net.Conn]struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.apiLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		admin.Close()
		return nil, err
	}
	if s.poolLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		_ = s.apiLn.Close()
		admin.Close()
		return nil, err
	}
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.wg.Go(func() { _ = s.httpSrv.Serve(s.apiLn) })
	s.wg.Go(s.acceptPooler)
	return s, nil
}

// URL is the API's base URL (without /v1), for supabase.Config.APIURL.
func (s *Server) URL() string { return "http://" + s.apiLn.Addr().String() }

// PoolerAddr is the pooler's host:port; every Supabase host leads there.
func (s *Server) PoolerAddr() string { return s.poolLn.Addr().String() }

// Dialer dials the pooler whatever address it is asked for (the router's
// upstream Dial override).
func (s *Server) Dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, s.PoolerAddr())
	}
}

// CAPool holds the CA that signed the pooler's certificate.
func (s *Server) CAPool() *x509.CertPool { return s.ca.Pool() }

// CACertPEM is that CA in PEM (for upstream.ca_file).
func (s *Server) CACertPEM() []byte { return s.ca.CertPEM() }

// PoolerHost is the shared pooler host of region (§5).
func PoolerHost(region string) string { return "aws-0-" + region + ".pooler.supabase.com" }

// FailNext makes the next len(statuses) API calls answer those statuses
// (with Retry-After: 1 for 429) without doing anything.
func (s *Server) FailNext(statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.failNext = append(s.mu.failNext, statuses...)
}

// LoseNextCreate makes the next create of a project named name happen
// and then drops the connection without an answer.
func (s *Server) LoseNextCreate(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.loseNext[name]++
}

// Calls is how many calls the API got for route ("POST /v1/projects",
// "GET /v1/projects/{ref}", ...), failed ones included.
func (s *Server) Calls(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.calls[route]
}

// Count is how many live projects are named name.
func (s *Server) Count(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.mu.projects {
		if p.name == name && !p.removed {
			n++
		}
	}
	return n
}

// Projects lists the live projects in creation order.
func (s *Server) Projects() []Project {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Project
	for _, ref := range s.mu.order {
		if p := s.mu.projects[ref]; !p.removed {
			out = append(out, s.viewLocked(p))
		}
	}
	return out
}

func (s *Server) viewLocked(p *project) Project {
	st := "COMING_UP"
	switch {
	case p.removed:
		st = "REMOVED"
	case time.Since(p.created) >= s.cfg.CreateDelay:
		st = "ACTIVE_HEALTHY"
	}
	return Project{Ref: p.ref, Name: p.name, OrganizationID: p.org, Region: p.region, Status: st, CreatedAt: p.created}
}

// Close stops both listeners, ends the pooler's sessions and drops every
// database and role the server made.
func (s *Server) Close() {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return
	}
	s.mu.closed = true
	for c := range s.mu.conns {
		_ = c.Close()
	}
	refs := make([]string, 0, len(s.mu.projects))
	for ref, p := range s.mu.projects {
		if !p.removed {
			refs = append(refs, ref)
		}
	}
	s.mu.Unlock()
	s.cancel()
	_ = s.httpSrv.Close()
	_ = s.poolLn.Close()
	s.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ref := range refs {
		if err := s.dropLocal(ctx, ref); err != nil {
			s.log.Warn("supabase fake: drop", "ref", ref, "err", err)
		}
	}
	s.admin.Close()
}

func localName(ref string) string { return "sb_" + ref }

func (s *Server) createLocal(ctx context.Context, ref, password string) error {
	n := pgx.Identifier{localName(ref)}.Sanitize()
	// The password is a literal: CREATE ROLE takes no parameters.
	for _, sql := range []string{
		"CREATE ROLE " + n + " LOGIN PASSWORD " + quoteLiteral(password),
		"CREATE DATABASE " + n + " OWNER " + n,
		"REVOKE ALL ON DATABASE " + n + " FROM PUBLIC",
	} {
		if _, err := s.admin.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) dropLocal(ctx context.Context, ref string) error {
	n := pgx.Identifier{localName(ref)}.Sanitize()
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + n + " WITH (FORCE)", "DROP ROLE IF EXISTS " + n} {
		if _, err := s.admin.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// newRef makes a 20-letter project ref (§3).
func newRef() string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// ServeHTTP is the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, ref, ok := parseRoute(r.Method, r.URL.Path)
	s.mu.Lock()
	s.mu.calls[route]++
	s.mu.Unlock()
	auth, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case !hasBearer || auth == "" || (s.cfg.Token != "" && subtle.ConstantTimeCompare([]byte(auth), []byte(s.cfg.Token)) != 1):
		writeJSON(w, http.StatusUnauthorized, msg("Unauthorized"))
		return
	case !ok:
		writeJSON(w, http.StatusNotFound, msg("Cannot "+r.Method+" "+r.URL.Path))
		return
	}
	if !s.allow(w, ref) {
		return
	}
	s.mu.Lock()
	var fail int
	if len(s.mu.failNext) > 0 {
		fail, s.mu.failNext = s.mu.failNext[0], s.mu.failNext[1:]
	}
	s.mu.Unlock()
	if fail != 0 {
		if fail == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, fail, msg("injected failure"))
		return
	}
	switch route {
	case "GET /v1/projects":
		s.listProjects(w)
	case "POST /v1/projects":
		s.createProject(w, r)
	case "GET /v1/projects/{ref}":
		s.withProject(w, ref, func(p Project) { writeJSON(w, http.StatusOK, projectJSON(p)) })
	case "DELETE /v1/projects/{ref}":
		s.deleteProject(w, r, ref)
	case "GET /v1/projects/{ref}/config/database/pooler":
		s.withProject(w, ref, func(p Project) {
			writeJSON(w, http.StatusOK, []map[string]any{{
				"identifier": p.Ref, "database_type": "PRIMARY", "db_host": PoolerHost(p.Region), "db_port": 6543,
				"db_user": "postgres." + p.Ref, "db_name": "postgres", "pool_mode": "transaction",
				"connection_string": "postgresql://postgres." + p.Ref + ":[YOUR-PASSWORD]@" + PoolerHost(p.Region) + ":6543/postgres",
			}})
		})
	case "PATCH /v1/projects/{ref}/database/password":
		s.setPassword(w, r, ref)
	}
}

// parseRoute names the call and pulls out the project ref.
func parseRoute(method, path string) (route, ref string, ok bool) {
	rest, found := strings.CutPrefix(path, "/v1/projects")
	if !found {
		return method + " " + path, "", false
	}
	if rest == "" || rest == "/" {
		route = method + " /v1/projects"
		return route, "", method == http.MethodGet || method == http.MethodPost
	}
	ref, sub, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	route = method + " /v1/projects/{ref}"
	if sub != "" {
		route += "/" + sub
	}
	switch route {
	case "GET /v1/projects/{ref}", "DELETE /v1/projects/{ref}",
		"GET /v1/projects/{ref}/config/database/pooler", "PATCH /v1/projects/{ref}/database/password":
		return route, ref, true
	}
	return route, ref, false
}

// allow applies the rate limit (§8): a fixed window of a minute per scope;
// every answer carries the X-RateLimit headers.
func (s *Server) allow(w http.ResponseWriter, ref string) bool {
	limit := s.cfg.RateLimit
	if limit < 0 {
		return true
	}
	if limit == 0 {
		limit = 120
	}
	scope := "org"
	if ref != "" {
		scope = "project/" + ref
	}
	now := time.Now()
	s.mu.Lock()
	win := s.mu.windows[scope]
	if win == nil || now.Sub(win.start) >= time.Minute {
		win = &window{start: now}
		s.mu.windows[scope] = win
	}
	win.n++
	n, reset := win.n, time.Minute-now.Sub(win.start)
	s.mu.Unlock()
	secs := int((reset + time.Second - 1) / time.Second)
	w.Header().Set("X-RateLimit-Limit", strconv.Itoa(limit))
	w.Header().Set("X-RateLimit-Remaining", strconv.Itoa(max(0, limit-n)))
	w.Header().Set("X-RateLimit-Reset", strconv.Itoa(secs))
	if n > limit {
		writeJSON(w, http.StatusTooManyRequests, msg("Too many requests"))
		return false
	}
	return true
}

func msg(m string) map[string]string { return map[string]string{"message": m} }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func projectJSON(p Project) map[string]any {
	return map[string]any{
		"id": p.Ref, "ref": p.Ref, "organization_id": p.OrganizationID, "name": p.Name, "region": p.Region,
		"created_at": p.CreatedAt.UTC().Format(time.RFC3339Nano), "status": p.Status,
		"database": map[string]any{"host": "db." + p.Ref + ".supabase.co", "version": "15.8.1", "postgres_engine": "15", "release_channel": "ga"},
	}
}

func (s *Server) listProjects(w http.ResponseWriter) {
	out := []map[string]any{}
	for _, p := range s.Projects() {
		out = append(out, projectJSON(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) withProject(w http.ResponseWriter, ref string, f func(Project)) {
	s.mu.Lock()
	p := s.mu.projects[ref]
	var v Project
	if p != nil && !p.removed {
		v = s.viewLocked(p)
	}
	s.mu.Unlock()
	if v.Ref == "" {
		writeJSON(w, http.StatusNotFound, msg("Project not found"))
		return
	}
	f(v)
}

func (s *Server) createProject(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name           string `json:"name"`
		OrganizationID string `json:"organization_id"`
		Region         string `json:"region"`
		DBPass         string `json:"db_pass"`
		Plan           string `json:"plan"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, msg("invalid body: "+err.Error()))
		return
	}
	switch {
	case body.Name == "" || body.OrganizationID == "" || body.Region == "" || body.DBPass == "":
		writeJSON(w, http.StatusBadRequest, msg("name, organization_id, region and db_pass are required"))
		return
	case body.Plan != "" && body.Plan != "free" && body.Plan != "pro":
		writeJSON(w, http.StatusBadRequest, msg("plan must be free or pro"))
		return
	}
	ref := newRef()
	if err := s.createLocal(r.Context(), ref, body.DBPass); err != nil {
		s.log.Warn("supabase fake: create", "err", err)
		writeJSON(w, http.StatusInternalServerError, msg("Failed to create project"))
		return
	}
	p := &project{ref: ref, name: body.Name, org: body.OrganizationID, region: body.Region, created: time.Now()}
	s.mu.Lock()
	s.mu.projects[ref] = p
	s.mu.order = append(s.mu.order, ref)
	lose := s.mu.loseNext[body.Name] > 0
	if lose {
		s.mu.loseNext[body.Name]--
	}
	v := s.viewLocked(p)
	s.mu.Unlock()
	if lose {
		s.log.Debug("supabase fake: losing the create answer", "ref", ref, "name", body.Name)
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	writeJSON(w, http.StatusCreated, projectJSON(v))
}

func (s *Server) deleteProject(w http.ResponseWriter, r *http.Request, ref string) {
	s.mu.Lock()
	p := s.mu.projects[ref]
	if p == nil || p.removed {
		s.mu.Unlock()
		writeJSON(w, http.StatusNotFound, msg("Project not found"))
		return
	}
	p.removed = true
	name := p.name
	s.mu.Unlock()
	if err := s.dropLocal(r.Context(), ref); err != nil {
		s.log.Warn("supabase fake: delete", "ref", ref, "err", err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": ref, "ref": ref, "name": name})
}

func (s *Server) setPassword(w http.ResponseWriter, r *http.Request, ref string) {
	var body struct {
		Password string `json:"password"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Password == "" {
		writeJSON(w, http.StatusBadRequest, msg("password is required"))
		return
	}
	s.withProject(w, ref, func(Project) {
		sql := "ALTER ROLE " + pgx.Identifier{localName(ref)}.Sanitize() + " PASSWORD " + quoteLiteral(body.Password)
		if _, err := s.admin.Exec(r.Context(), sql); err != nil {
			writeJSON(w, http.StatusInternalServerError, msg("Failed to update password"))
			return
		}
		writeJSON(w, http.StatusOK, msg("ok"))
	})
}
