package supabase

import (
	"testing"

	"github.com/pgtenant/pgtenant/provision"
)

// TestSessionEndpoint: a route through the pooler's transaction port is
// sent to its session port for a migration; session-mode and direct
// routes are left as they are.
func TestSessionEndpoint(t *testing.T) {
	pooler := provision.Endpoint{Host: "aws-0-us-east-1.pooler.supabase.com", User: "postgres.abc", Database: "postgres"}
	direct := provision.Endpoint{Host: "db.abc.supabase.co", Port: DefaultDirectPort, User: "postgres", Database: "postgres"}
	tests := []struct {
		name   string
		cfg    Config
		in     provision.Endpoint
		wantPt uint16
	}{
		{"transaction", Config{}, withPort(pooler, DefaultTransactionPort), DefaultSessionPort},
		{"session", Config{PoolerMode: PoolerSession}, withPort(pooler, DefaultSessionPort), DefaultSessionPort},
		{"own ports", Config{TransactionPort: 7000, SessionPort: 7001}, withPort(pooler, 7000), 7001},
		{"direct", Config{Endpoint: EndpointDirect}, direct, DefaultDirectPort},
	}
	for _, tt := range tests {
		p := &Provider{cfg: tt.cfg}
		got := p.SessionEndpoint(tt.in)
		want := withPort(tt.in, tt.wantPt)
		if got != want {
			t.Errorf("%s: SessionEndpoint = %v, want %v", tt.name, got, want)
		}
	}
}

func withPort(ep provision.Endpoint, port uint16) provision.Endpoint {
	ep.Port = port
	return ep
}
