package neontest

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// HTTP plumbing: routing, bearer auth, JSON, fault injection, request log.

const apiBase = "/api/v2"

// msgLocked is the 423 message of docs/neon-api.md §7.3.
const msgLocked = "project already has running conflicting operations, scheduling of new ones is prohibited"

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h func(w http.ResponseWriter, r *http.Request)) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.HandleFunc(method+" "+apiBase+path, h)
	}
	route("POST /projects", s.hCreateProject)
	route("GET /projects", s.hListProjects)
	route("GET /projects/{project_id}", s.hGetProject)
	route("DELETE /projects/{project_id}", s.hDeleteProject)
	route("POST /projects/{project_id}/branches", s.hCreateBranch)
	route("GET /projects/{project_id}/branches", s.hListBranches)
	route("GET /projects/{project_id}/branches/count", s.hCountBranches)
	route("GET /projects/{project_id}/branches/{branch_id}", s.hGetBranch)
	route("DELETE /projects/{project_id}/branches/{branch_id}", s.hDeleteBranch)
	route("GET /projects/{project_id}/branches/{branch_id}/endpoints", s.hBranchEndpoints)
	route("GET /projects/{project_id}/branches/{branch_id}/roles", s.hListRoles)
	route("GET /projects/{project_id}/branches/{branch_id}/roles/{role_name}", s.hGetRole)
	route("GET /projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password", s.hRevealPassword)
	route("POST /projects/{project_id}/branches/{branch_id}/roles/{role_name}/reset_password", s.hResetPassword)
	route("GET /projects/{project_id}/branches/{branch_id}/databases", s.hListDatabases)
	route("GET /projects/{project_id}/branches/{branch_id}/databases/{database_name}", s.hGetDatabase)
	route("GET /projects/{project_id}/endpoints", s.hListEndpoints)
	route("GET /projects/{project_id}/endpoints/{endpoint_id}", s.hGetEndpoint)
	route("GET /projects/{project_id}/connection_uri", s.hConnectionURI)
	route("GET /projects/{project_id}/operations", s.hListOperations)
	route("GET /projects/{project_id}/operations/{operation_id}", s.hGetOperation)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, &APIError{Status: http.StatusNotFound, Message: "not found"})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if r.Header.Get("X-Request-ID") == "" {
			r.Header.Set("X-Request-ID", newUUID())
		}
		sw := &statusWriter{ResponseWriter: w}
		defer s.logRequest(r, start, sw)
		if !s.authorized(r) {
			s.writeError(sw, r, &APIError{Status: http.StatusUnauthorized, Message: "authentication required: missing or invalid API key"})
			return
		}
		if status := s.takeFault(r); status != 0 {
			s.writeFault(sw, r, status)
			return
		}
		mux.ServeHTTP(sw, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	token = strings.TrimSpace(token)
	if s.cfg.APIKey == "" {
		return token != ""
	}
	return token == s.cfg.APIKey
}

func (s *Server) logRequest(r *http.Request, start time.Time, sw *statusWriter) {
	status := sw.status
	if sw.dropped {
		status = 0
	} else if status == 0 {
		status = http.StatusOK
	}
	req := Request{
		Method: r.Method,
		Path:   relPath(r.URL.Path),
		Query:  r.URL.RawQuery,
		Time:   start,
		Status: status,
	}
	s.reqLog.Lock()
	if len(s.reqLog.reqs) >= maxRequestLog {
		s.reqLog.reqs = slices.Delete(s.reqLog.reqs, 0, maxRequestLog/2)
	}
	s.reqLog.reqs = append(s.reqLog.reqs, req)
	s.reqLog.Unlock()
	s.log.Debug("neon fake api", "method", req.Method, "path", req.Path, "status", status, "took", time.Since(start))
}

func relPath(p string) string {
	if rel, ok := strings.CutPrefix(p, apiBase); ok {
		return rel
	}
	return p
}

// statusWriter records the status a handler answers.
type statusWriter struct {
	http.ResponseWriter
	status  int
	dropped bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (Hijack).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, e *APIError) {
	e.RequestID = r.Header.Get("X-Request-ID")
	s.writeJSON(w, e.Status, e)
}

// failRule is one FailNext registration.
type failRule struct {
	method string
	segs   []string
	status int
	n      int
}

func splitPath(p string) []string { return strings.Split(strings.Trim(p, "/"), "/") }

func (f *failRule) matches(method string, segs []string) bool {
	if f.method != "" && f.method != "*" && f.method != method {
		return false
	}
	if len(f.segs) != len(segs) {
		return false
	}
	for i, want := range f.segs {
		if want == "*" || strings.HasPrefix(want, "{") && strings.HasSuffix(want, "}") {
			continue
		}
		if want != segs[i] {
			return false
		}
	}
	return true
}

// takeFault consumes the first FailNext rule matching r and returns its
// status, or 0.
func (s *Server) takeFault(r *http.Request) int {
	segs := splitPath(relPath(r.URL.Path))
	s.faults.Lock()
	defer s.faults.Unlock()
	for i, f := range s.faults.rules {
		if f.matches(r.Method, segs) {
			f.n--
			if f.n == 0 {
				s.faults.rules = append(s.faults.rules[:i], s.faults.rules[i+1:]...)
			}
			return f.status
		}
	}
	return 0
}

func (s *Server) writeFault(w http.ResponseWriter, r *http.Request, status int) {
	if status == 524 { // Cloudflare's origin timeout: an HTML page, not JSON
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "<!DOCTYPE html>\n<html><head><title>console.neon.tech | 524: A timeout occurred</title></head>"+
			"<body><h1>A timeout occurred</h1><p>Error code 524</p></body></html>\n")
		return
	}
	msg := http.StatusText(status)
	switch status {
	case http.StatusTooManyRequests:
		msg = "rate limit exceeded"
	case http.StatusLocked:
		msg = msgLocked
	case http.StatusServiceUnavailable:
		msg = "service unavailable, please retry"
	case http.StatusInternalServerError:
		msg = "internal server error"
	}
	if msg == "" {
		msg = "injected failure"
	}
	s.writeError(w, r, &APIError{Status: status, Message: msg})
}

// takeDrop consumes one DropAfterCreate.
func (s *Server) takeDrop() bool {
	s.faults.Lock()
	defer s.faults.Unlock()
	if s.faults.drops > 0 {
		s.faults.drops--
		return true
	}
	return false
}

// hangUp closes the connection without answering.
func (s *Server) hangUp(w http.ResponseWriter) {
	if sw, ok := w.(*statusWriter); ok {
		sw.dropped = true
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("neon fake: hijack for DropAfterCreate", "err", err)
		return
	}
	_ = conn.Close()
}

// decodeBody decodes a JSON body into v. An empty body is allowed when
// optional; it reports whether there was one.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) *APIError {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		if optional {
			return nil
		}
		return badRequest("request body is required")
	}
	if err != nil {
		return badRequest("invalid request body: " + err.Error())
	}
	return nil
}

func badRequest(msg string) *APIError {
	return &APIError{Status: http.StatusBadRequest, Message: msg}
}

func notFound(what string) *APIError {
	return &APIError{Status: http.StatusNotFound, Message: what + " not found"}
}

func locked() *APIError { return &APIError{Status: http.StatusLocked, Message: msgLocked} }
