package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/resolver"
)

// Upstream TLS modes, as libpq's sslmode.
const (
	TLSDisable    = "disable"     // plaintext (a local server on a trusted network)
	TLSRequire    = "require"     // encrypted, certificate not checked
	TLSVerifyFull = "verify-full" // encrypted, certificate checked against the route's host name (sent as SNI)
)

// UpstreamConfig says how the router talks to upstreams. The zero value is
// plaintext and forwards every client startup parameter.
type UpstreamConfig struct {
	// TLS is one of TLSDisable (default), TLSRequire, TLSVerifyFull.
	TLS string
	// RootCAs verifies upstream certificates in verify-full mode. Nil means
	// the system roots.
	RootCAs *x509.CertPool
	// EndpointOption sends the Neon endpoint ID (the first label of the
	// route's host, without "-pooler") as options=endpoint=<id> and no SNI,
	// for networks whose middleboxes cannot pass SNI. The certificate is
	// still verified against the host name in verify-full mode.
	EndpointOption bool
	// ForwardParams, when not nil, is the only client startup parameters
	// forwarded upstream (lower-case names); others are dropped. Neon's
	// pooler refuses any parameter it does not track.
	ForwardParams []string
}

func (u *UpstreamConfig) validate() error {
	switch u.TLS {
	case "", TLSDisable, TLSRequire, TLSVerifyFull:
	default:
		return fmt.Errorf("proxy: upstream TLS mode %q: want %s, %s or %s", u.TLS, TLSDisable, TLSRequire, TLSVerifyFull)
	}
	if u.EndpointOption && (u.TLS == "" || u.TLS == TLSDisable) {
		return errors.New("proxy: the endpoint option is only meaningful with upstream TLS")
	}
	return nil
}

// tlsConfig returns the TLS configuration for an upstream named host, or nil
// for plaintext.
func (u *UpstreamConfig) tlsConfig(host string) *tls.Config {
	switch u.TLS {
	case TLSRequire:
		return &tls.Config{InsecureSkipVerify: true, ServerName: sniName(u, host), MinVersion: tls.VersionTLS12} //nolint:gosec // sslmode=require semantics
	case TLSVerifyFull:
		if !u.EndpointOption {
			return &tls.Config{ServerName: host, RootCAs: u.RootCAs, MinVersion: tls.VersionTLS12}
		}
		// No SNI, but the certificate must still name host.
		roots := u.RootCAs
		return &tls.Config{
			InsecureSkipVerify: true, //nolint:gosec // verified below, against host
			MinVersion:         tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("upstream sent no certificate")
				}
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
				return err
			},
		}
	}
	return nil
}

// validateUpstreams checks Upstream and each of Upstreams.
func (cfg *Config) validateUpstreams() error {
	errs := []error{cfg.Upstream.validate()}
	for name, u := range cfg.Upstreams {
		if u == nil {
			errs = append(errs, fmt.Errorf("proxy: upstream settings of provider %s: nil", name))
		} else if err := u.validate(); err != nil {
			errs = append(errs, fmt.Errorf("provider %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// upstreamOf returns how to reach rt: its provider's settings when
// Upstreams has them, else Upstream. With one provider (Upstreams nil) the
// lookup returns at once, allocating nothing.
func (s *Server) upstreamOf(rt resolver.Route) *UpstreamConfig {
	if u := s.cfg.Upstreams[rt.Provider]; u != nil {
		return u
	}
	return &s.cfg.Upstream
}

// routeTLS is tlsConfig for rt, whose own TLS mode (a static route's
// sslmode) overrides u's when set.
func (u *UpstreamConfig) routeTLS(rt resolver.Route) *tls.Config {
	if rt.TLS == "" || rt.TLS == u.TLS {
		return u.tlsConfig(rt.Host)
	}
	v := *u
	v.TLS = rt.TLS
	if v.TLS == TLSDisable {
		v.EndpointOption = false
	}
	return v.tlsConfig(rt.Host)
}

// RouteTLSConfig is the TLS configuration the router uses toward ep (its
// own TLS mode over u's), for other sessions to the same upstreams
// (pgtenant migrate).
func (u *UpstreamConfig) RouteTLSConfig(ep provision.Endpoint) *tls.Config {
	return u.routeTLS(resolver.Route{Endpoint: ep})
}

// TLSConfig returns the TLS configuration the router uses toward an
// upstream named host, or nil for plaintext, for other sessions to the
// same upstreams (pgtenant migrate).
func (u *UpstreamConfig) TLSConfig(host string) *tls.Config { return u.tlsConfig(host) }

// sniName is the SNI to send in require mode.
func sniName(u *UpstreamConfig, host string) string {
	if u.EndpointOption {
		return ""
	}
	return host
}

// upstreamParams is what of the client's startup parameters is forwarded
// upstream: everything but what the router decides itself (who logs in
// where, and replication), filtered by ForwardParams when set.
func (u *UpstreamConfig) upstreamParams(params map[string]string, host string) map[string]string {
	out := make(map[string]string, len(params)+2) // room for login's user and database
	for k, v := range params {
		if u.forwards(k) {
			out[k] = v
		}
	}
	if u.EndpointOption {
		opt := "endpoint=" + provision.EndpointID(host)
		if o := out["options"]; o != "" {
			opt = o + " " + opt
		}
		out["options"] = opt
	}
	return out
}

// forwards reports whether the client's startup parameter k goes upstream:
// not what the router decides itself (who logs in where, replication),
// and only what ForwardParams lists when set.
func (u *UpstreamConfig) forwards(k string) bool {
	switch k {
	case "user", "database", "replication":
		return false
	}
	return u.ForwardParams == nil || containsFold(u.ForwardParams, k)
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
