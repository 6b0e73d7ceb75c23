package proxy

import (
	"errors"
	"fmt"
)

// ErrNoAppSecret is Validate's (and New's) error for SCRAM authentication
// with neither a password nor a verifier. Callers that know where the secret
// comes from (an environment variable, a file) add that to the message.
var ErrNoAppSecret = errors.New("auth: no app secret configured: set a password or a SCRAM verifier (or use trust on loopback)")

// Validate reports what New would refuse in cfg, without reading the TLS
// files or deriving keys: the authentication method and secret, the client
// TLS mode, the tenant carriers, the upstream TLS settings and pooling. New runs the
// same checks, so a configuration that validates is one New accepts unless
// a file cannot be read. All problems are reported at once.
func (cfg *Config) Validate() error {
	return errors.Join(cfg.Auth.validate(), cfg.TLS.validate(), cfg.Tenant.Validate(), cfg.validateUpstreams(), cfg.Pool.validate())
}

func (a Auth) validate() error {
	if a.PerTenant {
		if err := a.validatePerTenant(); err != nil {
			return err
		}
	}
	switch a.Method {
	case AuthTrust:
		return nil
	case "", AuthSCRAM:
	default:
		return fmt.Errorf("auth: unknown method %q (want %q or %q)", a.Method, AuthSCRAM, AuthTrust)
	}
	switch {
	case a.Password != "":
		return nil
	case a.Verifier != "":
		_, err := ParseSCRAMVerifier(a.Verifier)
		return err
	}
	return ErrNoAppSecret
}

func (c TLSConfig) validate() error {
	switch c.mode() {
	case TLSModeDisable:
		return nil
	case TLSModeAllow, TLSModeRequired:
	default:
		return fmt.Errorf("proxy: TLS mode %q: want %s, %s or %s", c.Mode, TLSModeDisable, TLSModeAllow, TLSModeRequired)
	}
	if c.CertFile == "" || c.KeyFile == "" {
		return fmt.Errorf("proxy: TLS mode %s needs a certificate file and a key file", c.Mode)
	}
	return nil
}

// validatePerTenant checks what Auth.PerTenant needs.
func (a Auth) validatePerTenant() error {
	switch a.TenantSecret {
	case "", TenantSecretBesides, TenantSecretInstead:
	default:
		return fmt.Errorf("auth: tenant secret %q: want %s or %s", a.TenantSecret, TenantSecretBesides, TenantSecretInstead)
	}
	switch {
	case a.Method == AuthTrust:
		return errors.New("auth: per-tenant secrets need SCRAM authentication, not trust")
	case a.Password == "" && a.Verifier != "":
		return errors.New("auth: per-tenant secrets need the app secret itself, not only its SCRAM verifier: " +
			"each tenant is offered its own salt, and the app secret's keys are derived for it")
	case len(a.SaltKey) < 32:
		return errors.New("auth: per-tenant secrets need a salt key of at least 32 bytes")
	}
	return nil
}
