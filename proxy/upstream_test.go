package proxy

import (
	"errors"
	"maps"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

func TestUpstreamParams(t *testing.T) {
	client := map[string]string{
		"user": "acme", "database": "app", "replication": "false",
		"application_name": "psql", "TimeZone": "UTC", "search_path": "x", "options": "-c geqo=off",
	}
	tests := []struct {
		name string
		cfg  UpstreamConfig
		host string
		want map[string]string
	}{
		{"all but routing keys", UpstreamConfig{}, "db",
			map[string]string{"application_name": "psql", "TimeZone": "UTC", "search_path": "x", "options": "-c geqo=off"}},
		{"neon pooler set", UpstreamConfig{ForwardParams: []string{"application_name", "timezone"}}, "db",
			map[string]string{"application_name": "psql", "TimeZone": "UTC"}},
		{"endpoint option appended", UpstreamConfig{TLS: TLSVerifyFull, EndpointOption: true, ForwardParams: []string{"options"}},
			"ep-cool-sun-12345678-pooler.c-2.us-east-2.aws.neon.tech",
			map[string]string{"options": "-c geqo=off endpoint=ep-cool-sun-12345678"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cfg.upstreamParams(client, tt.host); !maps.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestUpstreamTLSConfig(t *testing.T) {
	host := "ep-x-pooler.c-2.us-east-2.aws.neon.tech"
	if (&UpstreamConfig{}).tlsConfig(host) != nil {
		t.Fatal("default is not plaintext")
	}
	if c := (&UpstreamConfig{TLS: TLSVerifyFull}).tlsConfig(host); c == nil || c.ServerName != host || c.InsecureSkipVerify {
		t.Fatalf("verify-full: %+v", c)
	}
	if c := (&UpstreamConfig{TLS: TLSVerifyFull, EndpointOption: true}).tlsConfig(host); c == nil || c.ServerName != "" || c.VerifyConnection == nil {
		t.Fatal("verify-full with the endpoint option must verify without SNI")
	}
	if err := (&UpstreamConfig{TLS: "prefer"}).validate(); err == nil {
		t.Fatal("unknown mode accepted")
	}
	if err := (&UpstreamConfig{EndpointOption: true}).validate(); err == nil {
		t.Fatal("endpoint option without TLS accepted")
	}
}

// Upstream errors map to client errors without panicking, whatever the
// upstream put in its SQLSTATE field (Neon's proxy may send none).
func TestUpstreamErrorCodes(t *testing.T) {
	tests := []struct {
		code      string
		retryable bool
		want      string
	}{
		{"28P01", true, codeCannotConnect},
		{"3D000", true, "3D000"},
		{"53300", false, "53300"},
		{"", false, codeCannotConnect},
		{"2", false, codeCannotConnect},
	}
	for _, tt := range tests {
		err := &pgconn.PgError{Code: tt.code, Message: "no"}
		if got := retryableUpstream(err); got != tt.retryable {
			t.Errorf("code %q: retryable = %v", tt.code, got)
		}
		var ce *ClientError
		if !errors.As(upstreamError("acme", resolver.Route{}, err), &ce) || ce.Code != tt.want {
			t.Errorf("code %q: client gets %+v, want %s", tt.code, ce, tt.want)
		}
	}
	if !retryableUpstream(errors.New("connection refused")) {
		t.Error("a network error is not retried")
	}
}

func TestDirectHost(t *testing.T) {
	for in, want := range map[string]string{
		"ep-cool-darkness-123456-pooler.c-2.us-east-2.aws.neon.tech": "ep-cool-darkness-123456.c-2.us-east-2.aws.neon.tech",
		"ep-cool-darkness-123456.c-2.us-east-2.aws.neon.tech":        "ep-cool-darkness-123456.c-2.us-east-2.aws.neon.tech",
		"ep-x-pooler":            "ep-x",
		"localhost":              "localhost",
		"127.0.0.1":              "127.0.0.1",
		"-pooler.example":        "-pooler.example",        // no label left: not a pooler host
		"db.ep-x-pooler.example": "db.ep-x-pooler.example", // only the first label counts
		"":                       "",
	} {
		if got := provision.DirectHost(in); got != want {
			t.Errorf("DirectHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDirectEndpointOption(t *testing.T) {
	for _, tc := range []struct {
		opts, rest string
		direct     bool
		bad        bool
	}{
		{opts: "", rest: ""},
		{opts: "-c pgtenant.endpoint=direct", direct: true},
		{opts: "-c geqo=off --pgtenant.endpoint=DIRECT", rest: "-c geqo=off", direct: true},
		{opts: "-c pgtenant.endpoint=direct -c pgtenant.endpoint=pooler", direct: false},
		{opts: "-c pgtenant.endpoint=pooler -c geqo=off", rest: "-c geqo=off"},
		{opts: "-c pgtenant.endpoint=nearest", bad: true},
	} {
		params := map[string]string{"user": "u"}
		if tc.opts != "" {
			params["options"] = tc.opts
		}
		direct, err := directEndpoint(params)
		if tc.bad {
			var ce *ClientError
			if !errors.As(err, &ce) || ce.Code != codeInvalidParameterValue {
				t.Errorf("%q: %v, want a 22023 client error", tc.opts, err)
			}
			continue
		}
		if err != nil || direct != tc.direct || params["options"] != tc.rest {
			t.Errorf("%q: direct %v, options %q, %v; want %v, %q", tc.opts, direct, params["options"], err, tc.direct, tc.rest)
		}
		if _, ok := params["options"]; ok && tc.rest == "" {
			t.Errorf("%q: empty options kept", tc.opts)
		}
	}
}

// With one provider (Upstreams nil) picking a route's upstream settings
// allocates nothing; with several, its provider's settings and its own TLS
// mode win.
func TestUpstreamOf(t *testing.T) {
	s := &Server{cfg: Config{Upstream: UpstreamConfig{TLS: TLSDisable}}}
	rt := resolver.Route{Endpoint: provision.Endpoint{Host: "127.0.0.1", Port: 5432, Provider: "local"}}
	if n := testing.AllocsPerRun(100, func() {
		if s.upstreamOf(rt).routeTLS(rt) != nil {
			t.Fatal("TLS toward a plaintext upstream")
		}
	}); n != 0 {
		t.Errorf("one provider: %v allocations per route, want 0", n)
	}
	neon := &UpstreamConfig{TLS: TLSVerifyFull}
	s.cfg.Upstreams = map[string]*UpstreamConfig{"local": &s.cfg.Upstream, "neon": neon}
	rt.Provider, rt.Host = "neon", "ep-x-pooler.aws.neon.tech"
	if c := s.upstreamOf(rt).routeTLS(rt); c == nil || c.ServerName != rt.Host || c.InsecureSkipVerify {
		t.Errorf("neon route: %+v, want verify-full with SNI", c)
	}
	rt.Provider, rt.TLS = "static", TLSRequire // no settings of its own: the default's, with the route's mode
	if c := s.upstreamOf(rt).routeTLS(rt); c == nil || !c.InsecureSkipVerify {
		t.Errorf("static route with sslmode=require: %+v, want TLS without verification", c)
	}
	rt.TLS = TLSDisable
	rt.Provider = "neon"
	if c := s.upstreamOf(rt).routeTLS(rt); c != nil {
		t.Errorf("route with sslmode=disable: %+v, want plaintext", c)
	}
}
