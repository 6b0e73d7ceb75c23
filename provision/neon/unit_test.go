package neon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgtenant/pgtenant/provision"
)

const testKey = "napi_0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn"

func TestPooledHost(t *testing.T) {
	tests := []struct{ name, host, want string }{
		{"cell host", "ep-round-unit-afbn7qv4.c-2.us-west-2.aws.neon.tech", "ep-round-unit-afbn7qv4-pooler.c-2.us-west-2.aws.neon.tech"},
		{"old host", "ep-cool-darkness-123456.us-east-2.aws.neon.tech", "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech"},
		{"azure", "ep-x-1.eastus2.azure.neon.tech", "ep-x-1-pooler.eastus2.azure.neon.tech"},
		{"already pooled", "ep-x-1-pooler.us-east-2.aws.neon.tech", "ep-x-1-pooler.us-east-2.aws.neon.tech"},
		{"single label", "localhost", "localhost-pooler"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pooledHost(tt.host); got != tt.want {
				t.Errorf("pooledHost(%q) = %q, want %q", tt.host, got, tt.want)
			}
		})
	}
}

// TestDirectHost: DirectHost undoes pooledHost, and leaves other hosts.
func TestDirectHost(t *testing.T) {
	for host, want := range map[string]string{
		"ep-round-unit-afbn7qv4-pooler.c-2.us-west-2.aws.neon.tech": "ep-round-unit-afbn7qv4.c-2.us-west-2.aws.neon.tech",
		"ep-round-unit-afbn7qv4.c-2.us-west-2.aws.neon.tech":        "ep-round-unit-afbn7qv4.c-2.us-west-2.aws.neon.tech",
		"ep-x-1.pooler-region.aws.neon.tech":                        "ep-x-1.pooler-region.aws.neon.tech", // first label only
		"localhost-pooler":                                          "localhost",
		"-pooler.example":                                           "-pooler.example",
		"":                                                          "",
	} {
		if got := provision.DirectHost(host); got != want {
			t.Errorf("DirectHost(%q) = %q, want %q", host, got, want)
		}
		if got := provision.DirectHost(pooledHost(want)); want != "" && want != "-pooler.example" && got != want {
			t.Errorf("DirectHost(pooledHost(%q)) = %q", want, got)
		}
	}
}

func TestDecodeAPIError(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   APIError
		text   string
	}{
		{"limit", 422, `{"code":"BRANCHES_LIMIT_EXCEEDED","message":"branches limit exceeded","request_id":"r1"}`,
			APIError{422, "BRANCHES_LIMIT_EXCEEDED", "branches limit exceeded", "r1"},
			"422 Unprocessable Entity BRANCHES_LIMIT_EXCEEDED: branches limit exceeded (request id r1)"},
		{"empty code", 404, `{"code":"","message":"branch not found"}`,
			APIError{404, "", "branch not found", "sent"}, "404 Not Found: branch not found (request id sent)"},
		{"html 524", 524, `<html><body>origin timeout, secret stuff</body></html>`,
			APIError{524, "", "(no error body)", "sent"}, "524: (no error body) (request id sent)"},
		{"no body", 503, ``, APIError{503, "", "(no error body)", "sent"},
			"503 Service Unavailable: (no error body) (request id sent)"},
		{"bad json", 400, `{"code":`, APIError{400, "", "(no error body)", "sent"},
			"400 Bad Request: (no error body) (request id sent)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decodeAPIError(tt.status, []byte(tt.body), "sent")
			if *got != tt.want {
				t.Errorf("decodeAPIError = %+v, want %+v", *got, tt.want)
			}
			if got.Error() != tt.text {
				t.Errorf("Error() = %q, want %q", got.Error(), tt.text)
			}
		})
	}
	long := decodeAPIError(400, []byte(`{"message":"`+strings.Repeat("x", 2000)+`"}`), "")
	if len(long.Message) > maxErrorMessage+3 {
		t.Errorf("message not capped: %d bytes", len(long.Message))
	}
}

func TestRetryableStatus(t *testing.T) {
	for status, want := range map[int]bool{423: true, 429: true, 503: true, 400: false, 401: false, 404: false, 409: false, 412: false, 422: false, 500: false} {
		if got := retryableStatus(&APIError{Status: status}); got != want {
			t.Errorf("retryableStatus(%d) = %v, want %v", status, got, want)
		}
	}
	if !retryableStatus(&APIError{Status: 422, Message: "branch not ready yet"}) {
		t.Error("422 branch not ready yet should be retried")
	}
	if !isBranchLimit(fmt.Errorf("ctx: %w", &APIError{Status: 422, Code: "BRANCHES_LIMIT_EXCEEDED"})) {
		t.Error("isBranchLimit misses a wrapped limit error")
	}
}

func TestConfigValidate(t *testing.T) {
	branch := func(f func(*Config)) Config {
		c := Config{APIKey: testKey, Projects: []BranchProject{{ID: "sparkling-hill-99143322"}}}
		f(&c)
		return c
	}
	project := func(f func(*Config)) Config {
		c := Config{APIKey: testKey, Mode: ModeProject}
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		err  string // substring; "" = valid
	}{
		{"branch minimal", branch(func(*Config) {}), ""},
		{"project minimal", project(func(*Config) {}), ""},
		{"project full", project(func(c *Config) {
			c.RegionID, c.PGVersion, c.OrgID = "aws-us-east-2", 17, "org-cool-sea-12345678"
			c.SuspendTimeout, c.MinCU, c.MaxCU = 5*time.Minute, 0.25, 2
		}), ""},
		{"never suspend", project(func(c *Config) { c.SuspendTimeout = -1 }), ""},
		{"no key", branch(func(c *Config) { c.APIKey = "" }), "API key is empty"},
		{"key with newline", branch(func(c *Config) { c.APIKey = "a\nb" }), "white space"},
		{"bad mode", branch(func(c *Config) { c.Mode = "schema" }), `mode "schema"`},
		{"branch without projects", Config{APIKey: testKey, Mode: ModeBranch}, "at least one project"},
		{"bad project id", branch(func(c *Config) { c.Projects[0].ID = "Bad_ID" }), "not a Neon id"},
		{"duplicate project", branch(func(c *Config) { c.Projects = append(c.Projects, c.Projects[0]) }), "listed twice"},
		{"negative max", branch(func(c *Config) { c.Projects[0].MaxBranches = -1 }), "negative"},
		{"region in branch mode", branch(func(c *Config) { c.RegionID = "aws-us-east-2" }), "project mode only"},
		{"projects in project mode", project(func(c *Config) { c.Projects = []BranchProject{{ID: "a"}} }), "branch mode"},
		{"pg version", project(func(c *Config) { c.PGVersion = 12 }), "pg version 12"},
		{"short suspend", project(func(c *Config) { c.SuspendTimeout = 30 * time.Second }), "suspend timeout"},
		{"long suspend", project(func(c *Config) { c.SuspendTimeout = 8 * 24 * time.Hour }), "suspend timeout"},
		{"fractional suspend", project(func(c *Config) { c.SuspendTimeout = 90500 * time.Millisecond }), "suspend timeout"},
		{"small cu", project(func(c *Config) { c.MinCU = 0.1 }), "min CU"},
		{"min above max", project(func(c *Config) { c.MinCU, c.MaxCU = 2, 1 }), "above max"},
		{"bad url", branch(func(c *Config) { c.BaseURL = "ftp://x" }), "base URL"},
		{"url with credentials", branch(func(c *Config) { c.BaseURL = "https://u:secretpw@x/api/v2" }), "credentials"},
		{"unique passwords in project mode", project(func(c *Config) { c.UniquePasswords = true }), "branch mode only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.err != "" && err == nil:
				t.Fatalf("Validate passed, want error containing %q", tt.err)
			case err != nil && !strings.Contains(err.Error(), tt.err):
				t.Fatalf("Validate: %v, want it to contain %q", err, tt.err)
			}
			if err != nil && (strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), "secretpw")) {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}
}

func TestConfigMasksKey(t *testing.T) {
	cfg := Config{APIKey: testKey, Projects: []BranchProject{{ID: "p-1"}}}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "cfg", cfg)
	for name, s := range map[string]string{
		"String": cfg.String(), "%v": fmt.Sprintf("%v", cfg), "%+v": fmt.Sprintf("%+v", cfg), "slog": buf.String(),
	} {
		if strings.Contains(s, testKey) || strings.Contains(s, "napi_") {
			t.Errorf("%s leaks the API key: %s", name, s)
		}
		if !strings.Contains(s, "xxxxx") {
			t.Errorf("%s does not show that a key is set: %s", name, s)
		}
	}
}

func TestRequestPath(t *testing.T) {
	r := request{route: "/projects/{}/branches/{}/roles/{}/reveal_password", args: []string{"p-1", "br-2", "a/b c"}}
	if got, want := r.path(), "/projects/p-1/branches/br-2/roles/a%2Fb%20c/reveal_password"; got != want {
		t.Errorf("path = %q, want %q", got, want)
	}
}

// maxInWindow returns the most events in any window [t, t+w) of sorted times.
func maxInWindow(times []time.Time, w time.Duration) int {
	most, j := 0, 0
	for i := range times {
		for times[i].Sub(times[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func TestLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const perMinute, perSecond = 120, 40
		l := newLimiter(perMinute, perSecond)
		var (
			mu      sync.Mutex
			all     []time.Time
			byRoute = map[string][]time.Time{}
		)
		start := time.Now()
		var wg sync.WaitGroup
		for g := range 6 {
			route := fmt.Sprint("GET /r", g%2) // two routes, three callers each
			wg.Go(func() {
				for range 50 {
					if err := l.wait(t.Context(), route); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					all = append(all, time.Now())
					byRoute[route] = append(byRoute[route], time.Now())
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if n := maxInWindow(all, time.Minute); n > perMinute {
			t.Errorf("%d requests in one minute, limit %d", n, perMinute)
		}
		for r, ts := range byRoute {
			if n := maxInWindow(ts, time.Second); n > perSecond {
				t.Errorf("route %s: %d requests in one second, limit %d", r, n, perSecond)
			}
		}
		// 300 requests: a burst of 12, then 108 per minute.
		if got, want := time.Since(start), time.Duration(300-12)*time.Minute/108; got < want-time.Second || got > want+time.Second {
			t.Errorf("300 requests took %v, want about %v", got, want)
		}
	})
}

func TestLimiterPerRoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(100000, 40)
		var ts []time.Time
		for range 200 {
			if err := l.wait(t.Context(), "POST /projects/{}/branches"); err != nil {
				t.Fatal(err)
			}
			ts = append(ts, time.Now())
		}
		// A burst of 20, then one per 50ms: 39 in any half-open second.
		if n := maxInWindow(ts, time.Second); n > 40 || n < 39 {
			t.Errorf("max %d requests in one second on one route, want 39 or 40", n)
		}
		// Another route is not held up by the busy one.
		t0 := time.Now()
		if err := l.wait(t.Context(), "GET /projects"); err != nil || time.Since(t0) != 0 {
			t.Errorf("other route waited %v (err %v)", time.Since(t0), err)
		}
	})
}

func TestLimiterCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLimiter(1, 40) // one request per minute
		if err := l.wait(t.Context(), "GET /a"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		t0 := time.Now()
		err := l.wait(ctx, "GET /a")
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) != time.Second {
			t.Fatalf("wait = %v after %v, want deadline exceeded after 1s", err, time.Since(t0))
		}
	})
}

// scripted is an httptest handler answering from a script of statuses, then
// 200 {}; a status of -1 drops the connection without an answer.
type scripted struct {
	mu       sync.Mutex
	statuses []int
	calls    atomic.Int32
	auth     []string
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	s.mu.Lock()
	s.auth = append(s.auth, r.Header.Get("Authorization"))
	status := http.StatusOK
	if len(s.statuses) > 0 {
		status, s.statuses = s.statuses[0], s.statuses[1:]
	}
	s.mu.Unlock()
	switch {
	case status == -1:
		conn, _, _ := w.(http.Hijacker).Hijack()
		_ = conn.Close()
	case status >= 300:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"code":"","message":"scripted %d"}`, status)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, `{"branch":{"id":"br-1"}}`)
	}
}

func TestClientRetries(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		statuses []int
		calls    int32
		wantErr  string // "" = success
		lost     bool
	}{
		{"423 429 503 then ok", http.MethodPost, []int{423, 429, 503}, 4, "", false},
		{"400 not retried", http.MethodPost, []int{400}, 1, "400 Bad Request", false},
		{"401 not retried", http.MethodGet, []int{401}, 1, "401 Unauthorized", false},
		{"404 not retried", http.MethodGet, []int{404}, 1, "404 Not Found", false},
		{"409 not retried", http.MethodPost, []int{409}, 1, "409 Conflict", false},
		{"422 not retried", http.MethodPost, []int{422}, 1, "422 Unprocessable Entity", false},
		{"500 on GET retried", http.MethodGet, []int{500, 502}, 3, "", false},
		{"500 on POST is lost", http.MethodPost, []int{500}, 1, "500 Internal Server Error", true},
		{"dropped GET retried", http.MethodGet, []int{-1, -1}, 3, "", false},
		{"dropped POST is lost", http.MethodPost, []int{-1}, 1, "no usable answer", true},
		{"budget exhausted", http.MethodGet, slices.Repeat([]int{503}, 1000), 0, "gave up after", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &scripted{statuses: tt.statuses}
			srv := httptest.NewServer(h)
			defer srv.Close()
			c := &client{
				base: srv.URL, key: testKey, http: srv.Client(),
				lim:    newLimiter(1e6, 1e6),
				budget: 300 * time.Millisecond, delay: time.Millisecond,
				log: slog.New(slog.DiscardHandler),
			}
			r := request{method: tt.method, route: "/projects/{}/branches", args: []string{"p-1"}, repeatable: tt.method == http.MethodGet}
			if tt.method == http.MethodPost {
				r.body = map[string]string{"x": "y"}
			}
			var out createdResp
			_, err := c.do(t.Context(), r, &out)
			if tt.calls != 0 && h.calls.Load() != tt.calls {
				t.Errorf("server saw %d requests, want %d", h.calls.Load(), tt.calls)
			}
			var lost *LostError
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("do: %v", err)
			case tt.wantErr == "":
				if out.Branch.ID != "br-1" {
					t.Errorf("answer not decoded: %+v", out)
				}
			case err == nil || !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("do: %v, want error containing %q", err, tt.wantErr)
			case errors.As(err, &lost) != tt.lost:
				t.Fatalf("do: %v: LostError %v, want %v", err, !tt.lost, tt.lost)
			}
			if err != nil && strings.Contains(err.Error(), testKey) {
				t.Fatalf("error leaks the API key: %v", err)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, a := range h.auth {
				if a != "Bearer "+testKey {
					t.Fatalf("Authorization = %q", a)
				}
			}
		})
	}
}
