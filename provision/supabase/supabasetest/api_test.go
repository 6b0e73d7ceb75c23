package supabasetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const token = "sbp_token"

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.AdminDSN = pgtest.Shared(t).AdminDSN("postgres")
	cfg.Token = token
	cfg.Log = slog.New(slog.DiscardHandler)
	s, err := NewServer(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// do sends one call and returns its status, headers and decoded body.
func do(t *testing.T, s *Server, tok, method, path string, body any) (int, http.Header, any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL()+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, resp.Header, v
}

func create(t *testing.T, s *Server, name, pass string) map[string]any {
	t.Helper()
	st, _, v := do(t, s, token, "POST", "/v1/projects", map[string]string{"name": name, "organization_id": "org", "region": "eu-west-1", "db_pass": pass})
	if st != http.StatusCreated {
		t.Fatalf("create: %d %v", st, v)
	}
	return v.(map[string]any)
}

func TestAPI(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newServer(t, Config{CreateDelay: time.Hour})
	p := create(t, s, "p1", "pw1")
	ref := p["id"].(string)
	if len(ref) != 20 || p["ref"] != ref || p["status"] != "COMING_UP" || p["organization_id"] != "org" {
		t.Fatalf("created project %v", p)
	}
	valid := map[string]string{"name": "x", "organization_id": "org", "region": "r", "db_pass": "p"}
	without := func(k string) map[string]string {
		m := map[string]string{}
		for kk, v := range valid {
			if kk != k {
				m[kk] = v
			}
		}
		return m
	}
	for _, tc := range []struct {
		name, tok, method, path string
		body                    any
		want                    int
		check                   func(t *testing.T, v any)
	}{
		{"no token", "", "GET", "/v1/projects", nil, 401, nil},
		{"wrong token", "sbp_other", "GET", "/v1/projects", nil, 401, nil},
		{"unknown path", token, "GET", "/v1/organizations", nil, 404, nil},
		{"list", token, "GET", "/v1/projects", nil, 200, func(t *testing.T, v any) {
			if l, _ := v.([]any); len(l) != 1 || l[0].(map[string]any)["name"] != "p1" {
				t.Errorf("list = %v", v)
			}
		}},
		{"get", token, "GET", "/v1/projects/" + ref, nil, 200, func(t *testing.T, v any) {
			m := v.(map[string]any)
			if m["status"] != "COMING_UP" || m["database"].(map[string]any)["host"] != "db."+ref+".supabase.co" {
				t.Errorf("get = %v", v)
			}
		}},
		{"get unknown", token, "GET", "/v1/projects/aaaaaaaaaaaaaaaaaaaa", nil, 404, nil},
		{"pooler", token, "GET", "/v1/projects/" + ref + "/config/database/pooler", nil, 200, func(t *testing.T, v any) {
			e := v.([]any)[0].(map[string]any)
			if e["db_host"] != "aws-0-eu-west-1.pooler.supabase.com" || e["db_user"] != "postgres."+ref || e["db_port"] != 6543.0 || e["database_type"] != "PRIMARY" {
				t.Errorf("pooler = %v", v)
			}
		}},
		{"create without name", token, "POST", "/v1/projects", without("name"), 400, nil},
		{"create without db_pass", token, "POST", "/v1/projects", without("db_pass"), 400, nil},
		{"create without org", token, "POST", "/v1/projects", without("organization_id"), 400, nil},
		{"bad plan", token, "POST", "/v1/projects", map[string]string{"name": "x", "organization_id": "o", "region": "r", "db_pass": "p", "plan": "team"}, 400, nil},
		{"password without body", token, "PATCH", "/v1/projects/" + ref + "/database/password", map[string]string{}, 400, nil},
		{"password", token, "PATCH", "/v1/projects/" + ref + "/database/password", map[string]string{"password": "pw2"}, 200, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, _, v := do(t, s, tc.tok, tc.method, tc.path, tc.body)
			if st != tc.want {
				t.Fatalf("%s %s = %d %v, want %d", tc.method, tc.path, st, v, tc.want)
			}
			if m, ok := v.(map[string]any); st >= 400 && (!ok || m["message"] == "") {
				t.Errorf("error body %v has no message", v)
			}
			if tc.check != nil {
				tc.check(t, v)
			}
		})
	}
	// Names need not be unique (docs/supabase-api.md §9).
	create(t, s, "p1", "pw")
	if n := s.Count("p1"); n != 2 {
		t.Errorf("Count(p1) = %d, want 2", n)
	}
	if st, _, _ := do(t, s, token, "DELETE", "/v1/projects/"+ref, nil); st != 200 {
		t.Errorf("delete = %d", st)
	}
	if st, _, _ := do(t, s, token, "DELETE", "/v1/projects/"+ref, nil); st != 404 {
		t.Errorf("second delete = %d, want 404", st)
	}
	if st, _, _ := do(t, s, token, "GET", "/v1/projects/"+ref, nil); st != 404 {
		t.Errorf("get after delete = %d, want 404", st)
	}
}

func TestRateLimit(t *testing.T) {
	s := newServer(t, Config{RateLimit: 2})
	for i, want := range []int{200, 200, 429} {
		st, h, _ := do(t, s, token, "GET", "/v1/projects", nil)
		if st != want {
			t.Fatalf("call %d = %d, want %d", i+1, st, want)
		}
		if h.Get("X-RateLimit-Limit") != "2" || h.Get("X-RateLimit-Reset") == "" {
			t.Errorf("call %d: headers %v", i+1, h)
		}
	}
	// Each project is a scope of its own.
	st, _, _ := do(t, s, token, "GET", "/v1/projects/aaaaaaaaaaaaaaaaaaaa", nil)
	if st != 404 {
		t.Errorf("project scope call = %d, want 404 (not limited)", st)
	}
}

func TestLoseNextCreate(t *testing.T) {
	s := newServer(t, Config{})
	s.LoseNextCreate("lost")
	req, _ := http.NewRequestWithContext(t.Context(), "POST", s.URL()+"/v1/projects",
		strings.NewReader(`{"name":"lost","organization_id":"o","region":"r","db_pass":"p"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the lost create answered %s", resp.Status)
	}
	if n := s.Count("lost"); n != 1 {
		t.Errorf("Count = %d: the create must happen although its answer is lost", n)
	}
}

// TestPooler logs in through the pooler host (postgres.<ref>) and the
// direct host (postgres), with TLS verify-full, and checks the refusals.
func TestPooler(t *testing.T) {
	pgtest.CheckGoroutines(t)
	s := newServer(t, Config{})
	ref := create(t, s, "db", "secret")["id"].(string)
	other := create(t, s, "other", "secret2")["id"].(string)
	connect := func(host, user, db, pass string) error {
		cfg, err := pgconn.ParseConfig("")
		if err != nil {
			return err
		}
		cfg.Host, cfg.Port, cfg.User, cfg.Database, cfg.Password = host, 6543, user, db, pass
		cfg.TLSConfig = &tls.Config{RootCAs: s.CAPool(), ServerName: host, MinVersion: tls.VersionTLS12}
		cfg.Fallbacks = nil
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
		cfg.DialFunc = s.Dialer()
		c, err := pgconn.ConnectConfig(t.Context(), cfg)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		_, err = c.Exec(t.Context(), "SELECT 1").ReadAll()
		return err
	}
	pooler := PoolerHost("eu-west-1")
	for _, tc := range []struct {
		name, host, user, db, pass string
		ok                         bool
		code                       string
	}{
		{"pooler", pooler, "postgres." + ref, "postgres", "secret", true, ""},
		{"direct", "db." + ref + ".supabase.co", "postgres", "postgres", "secret", true, ""},
		{"pooler wrong password", pooler, "postgres." + ref, "postgres", "nope", false, "28P01"},
		{"other project's password", pooler, "postgres." + ref, "postgres", "secret2", false, "28P01"},
		{"unknown ref", pooler, "postgres.bbbbbbbbbbbbbbbbbbbb", "postgres", "secret", false, "XX000"},
		{"no ref", pooler, "postgres", "postgres", "secret", false, "XX000"},
		{"other database", pooler, "postgres." + ref, "sb_" + other, "secret", false, "3D000"},
		{"direct with pooler user", "db." + ref + ".supabase.co", "postgres." + ref, "postgres", "secret", false, "28000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := connect(tc.host, tc.user, tc.db, tc.pass)
			if tc.ok != (err == nil) {
				t.Fatalf("connect = %v, want ok %v", err, tc.ok)
			}
			var pe *pgconn.PgError
			if tc.code != "" && !(errors.As(err, &pe) && pe.Code == tc.code) {
				t.Errorf("connect = %v, want SQLSTATE %s", err, tc.code)
			}
		})
	}
}
