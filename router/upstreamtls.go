package router

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/proxy"
)

// UpstreamTLSChoice is the TLS mode toward upstreams a configuration leads
// to, and what it was chosen for.
type UpstreamTLSChoice struct {
	// Mode is proxy.TLSDisable, proxy.TLSRequire or proxy.TLSVerifyFull.
	Mode string
	// Upstream is the host:port (or Unix socket directory) the choice was
	// made for: upstream.dial_override when set, else the local provider's
	// server. Empty for neon, whose hosts are per tenant (and remote).
	Upstream string
	// Loopback says Upstream is a loopback IP, "localhost" or a Unix
	// socket: traffic that never leaves the host.
	Loopback bool
	// Explicit says upstream.tls set Mode.
	Explicit bool
}

// UpstreamTLS says which TLS mode the router uses toward upstreams:
// upstream.tls when set; else verify-full for neon (which refuses
// plaintext), supabase (docs/supabase-api.md §7), aurora and rds (remote, with RDS's CAs) and, for the local provider, verify-full when upstream.ca_file
// is set, disable toward a loopback upstream (dev's own server, a PgBouncer
// on the same host) and require toward any other, so that an unconfigured
// router never sends tenants' traffic across a network in plaintext.
// Nothing is dialled or resolved: a host name other than "localhost" counts
// as remote.
func (fc *Config) UpstreamTLS() (UpstreamTLSChoice, error) {
	return fc.upstreamTLSFor(fc.Provider.Kind, true)
}

// upstreamTLSFor is UpstreamTLS for provider kind; upstream.tls and
// upstream.ca_file choose the mode only for the default provider (dflt).
// A static route's own sslmode overrides what is chosen here.
func (fc *Config) upstreamTLSFor(kind string, dflt bool) (UpstreamTLSChoice, error) {
	var c UpstreamTLSChoice
	switch {
	case fc.Upstream.DialOverride != "":
		host, _, err := net.SplitHostPort(fc.Upstream.DialOverride)
		if err != nil {
			return c, fmt.Errorf("upstream.dial_override: %w", err)
		}
		c.Upstream, c.Loopback = fc.Upstream.DialOverride, isLoopback(host)
	case kind == "local":
		host, port := fc.Provider.Local.Host, fc.Provider.Local.Port
		if host == "" || port == 0 {
			// Never in an error: the DSN holds the admin password.
			cc, err := pgconn.ParseConfig(fc.Provider.Local.AdminDSN)
			if err != nil {
				return c, fmt.Errorf("provider.local.admin_dsn (%s) cannot be parsed", EnvAdminDSN)
			}
			if host == "" {
				host = cc.Host
			}
			if port == 0 {
				port = cc.Port
			}
		}
		c.Upstream, c.Loopback = net.JoinHostPort(host, strconv.Itoa(int(port))), isLoopback(host)
		if strings.HasPrefix(host, "/") {
			c.Upstream = host
		}
	}
	switch {
	case dflt && fc.Upstream.TLS != "":
		c.Mode, c.Explicit = fc.Upstream.TLS, true
	case kind == "neon", kind == "supabase", kind == "aurora", kind == "rds", dflt && fc.Upstream.CAFile != "":
		c.Mode = proxy.TLSVerifyFull
	case c.Loopback:
		c.Mode = proxy.TLSDisable
	default:
		c.Mode = proxy.TLSRequire
	}
	return c, nil
}

// Plaintext says the choice sends traffic in plaintext over a network.
func (c UpstreamTLSChoice) Plaintext() bool { return c.Mode == proxy.TLSDisable && !c.Loopback }

// isLoopback says host is a loopback IP, "localhost" or a Unix socket
// directory.
func isLoopback(host string) bool {
	if strings.HasPrefix(host, "/") || strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
