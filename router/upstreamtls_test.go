package router

import (
	"testing"

	"github.com/pgtenant/pgtenant/proxy"
)

func TestUpstreamTLSDefault(t *testing.T) {
	const remoteDSN = "postgres://admin:pw@db.internal:5433/postgres"
	tests := []struct {
		name                    string
		kind, dsn, host, tls    string
		ca, dialOverride        string
		wantMode, wantUpstream  string
		wantLoopback, wantPlain bool
	}{
		{name: "loopback IP: plaintext, as dev", dsn: "postgres://a:pw@127.0.0.1:5432/postgres",
			wantMode: proxy.TLSDisable, wantUpstream: "127.0.0.1:5432", wantLoopback: true},
		{name: "IPv6 loopback", dsn: "postgres://a:pw@[::1]:5432/postgres",
			wantMode: proxy.TLSDisable, wantUpstream: "[::1]:5432", wantLoopback: true},
		{name: "localhost", dsn: "postgres://a:pw@localhost:5432/postgres",
			wantMode: proxy.TLSDisable, wantUpstream: "localhost:5432", wantLoopback: true},
		{name: "unix socket", dsn: "host=/var/run/postgresql user=a dbname=postgres",
			wantMode: proxy.TLSDisable, wantUpstream: "/var/run/postgresql", wantLoopback: true},
		{name: "remote host: require", dsn: remoteDSN,
			wantMode: proxy.TLSRequire, wantUpstream: "db.internal:5433"},
		{name: "remote IP: require", dsn: "postgres://a:pw@10.0.0.7:5432/postgres",
			wantMode: proxy.TLSRequire, wantUpstream: "10.0.0.7:5432"},
		{name: "remote with a CA: verify-full", dsn: remoteDSN, ca: "/etc/ca.pem",
			wantMode: proxy.TLSVerifyFull, wantUpstream: "db.internal:5433"},
		{name: "loopback with a CA: verify-full", dsn: "postgres://a:pw@127.0.0.1:5432/postgres", ca: "/etc/ca.pem",
			wantMode: proxy.TLSVerifyFull, wantUpstream: "127.0.0.1:5432", wantLoopback: true},
		{name: "provider.local.host decides, not the admin DSN", dsn: "postgres://a:pw@127.0.0.1:5432/postgres", host: "pg.internal",
			wantMode: proxy.TLSRequire, wantUpstream: "pg.internal:5432"},
		{name: "dial_override decides", dsn: remoteDSN, dialOverride: "127.0.0.1:6543",
			wantMode: proxy.TLSDisable, wantUpstream: "127.0.0.1:6543", wantLoopback: true},
		{name: "explicit disable toward a remote host", dsn: remoteDSN, tls: proxy.TLSDisable,
			wantMode: proxy.TLSDisable, wantUpstream: "db.internal:5433", wantPlain: true},
		{name: "explicit require toward loopback", dsn: "postgres://a:pw@127.0.0.1:5432/postgres", tls: proxy.TLSRequire,
			wantMode: proxy.TLSRequire, wantUpstream: "127.0.0.1:5432", wantLoopback: true},
		{name: "neon: verify-full", kind: "neon", wantMode: proxy.TLSVerifyFull},
		{name: "neon, explicit disable", kind: "neon", tls: proxy.TLSDisable, wantMode: proxy.TLSDisable, wantPlain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := DefaultConfig()
			if tt.kind != "" {
				fc.Provider.Kind = tt.kind
			}
			fc.Provider.Local.AdminDSN, fc.Provider.Local.Host = tt.dsn, tt.host
			fc.Upstream.TLS, fc.Upstream.CAFile, fc.Upstream.DialOverride = tt.tls, tt.ca, tt.dialOverride
			c, err := fc.UpstreamTLS()
			if err != nil {
				t.Fatal(err)
			}
			if c.Mode != tt.wantMode || c.Upstream != tt.wantUpstream || c.Loopback != tt.wantLoopback ||
				c.Plaintext() != tt.wantPlain || c.Explicit != (tt.tls != "") {
				t.Fatalf("UpstreamTLS = %+v (plaintext %v); want mode %q upstream %q loopback %v plaintext %v",
					c, c.Plaintext(), tt.wantMode, tt.wantUpstream, tt.wantLoopback, tt.wantPlain)
			}
		})
	}
}
