package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/xdg-go/scram"
)

// Auth.TenantSecret values: whether the app secret still opens a tenant
// that has a secret of its own.
const (
	// TenantSecretBesides: the tenant's own secret and the app secret both
	// open it (a person gets psql access to one tenant; the app keeps using
	// the app secret).
	TenantSecretBesides = "besides"
	// TenantSecretInstead: only the tenant's own secret opens it.
	TenantSecretInstead = "instead"
)

// Tenant verifiers are made, and must be given, with PostgreSQL's defaults:
// the salts offered for tenants without a secret of their own have the same
// length and iteration count, so that the server-first-message does not
// tell the two apart.
const (
	TenantVerifierIterations = 4096
	TenantVerifierSaltLen    = 16
)

// Credentials a client logged in with (label credential of
// Metrics.ClientLogins).
const (
	CredentialApp    = "app"    // the shared app secret
	CredentialTenant = "tenant" // the tenant's own secret (Auth.PerTenant)
	CredentialTrust  = "trust"  // no secret (Auth.Method trust)
)

// appKeysCacheSize bounds the app secret's keys kept, one per salt (tenant)
// logged in to: 64 bytes each.
const appKeysCacheSize = 16384

// NewTenantVerifier returns a SCRAM-SHA-256 verifier of password in
// pg_authid's format, with a random 16-byte salt and 4096 iterations: what
// a tenant's own secret is stored as (the password itself never is).
func NewTenantVerifier(password string) (string, error) {
	if password == "" {
		return "", errors.New("auth: empty password")
	}
	salt := make([]byte, TenantVerifierSaltLen)
	_, _ = rand.Read(salt)
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return "", errors.New("auth: password is not valid for SCRAM (SASLprep failed)")
	}
	sc, err := cl.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: TenantVerifierIterations})
	if err != nil {
		return "", fmt.Errorf("auth: derive SCRAM credentials: %w", err)
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", sc.Iters, b64([]byte(sc.Salt)), b64(sc.StoredKey), b64(sc.ServerKey)), nil
}

// ParseTenantVerifier parses a tenant's verifier as ParseSCRAMVerifier
// does, and also requires PostgreSQL's default salt length and iteration
// count (16 bytes, 4096), which NewTenantVerifier and
// `SELECT rolpassword FROM pg_authid` under default settings give: any other
// would set the tenant apart in what the router sends before the password
// is checked. Errors never echo v.
func ParseTenantVerifier(v string) (scram.StoredCredentials, error) {
	sc, err := ParseSCRAMVerifier(v)
	if err != nil {
		return sc, err
	}
	if sc.Iters != TenantVerifierIterations || len(sc.Salt) != TenantVerifierSaltLen {
		return scram.StoredCredentials{}, fmt.Errorf("auth: a tenant's SCRAM verifier must have %d iterations and a %d-byte salt (PostgreSQL's defaults), not %d and %d: "+
			"other values would tell clients which tenants have a secret of their own; give the password instead, or make the verifier with those values",
			TenantVerifierIterations, TenantVerifierSaltLen, sc.Iters, len(sc.Salt))
	}
	return sc, nil
}

// tenantAuth is client authentication with per-tenant secrets
// (Auth.PerTenant). The SCRAM server-first-message carries the salt before
// the client has shown which secret it holds, and its proof is bound to
// that salt; so for each tenant one salt is offered and every secret that
// may open the tenant is checked for that salt: the tenant's own verifier's
// salt where it has one, else a keyed mock salt (as PostgreSQL offers for a
// role that does not exist), and the app secret's keys derived for that
// salt (PBKDF2 once per salt, then cached). Safe for concurrent use.
type tenantAuth struct {
	password string // the app secret; keys are derived from it per salt
	saltKey  []byte
	instead  atomic.Bool                                        // TenantSecretInstead in force
	creds    atomic.Pointer[map[string]scram.StoredCredentials] // tenants' own verifiers

	mu  sync.Mutex
	app *simplelru.LRU[scram.KeyFactors, scram.StoredCredentials] // app keys by salt; guarded by mu
	// derive bounds the PBKDF2 runs at once, so that a flood of logins
	// naming made-up tenants (each a new salt) queues rather than taking
	// every core from the sessions being relayed.
	derive chan struct{}
}

func newTenantAuth(a Auth) *tenantAuth {
	lru, _ := simplelru.NewLRU[scram.KeyFactors, scram.StoredCredentials](appKeysCacheSize, nil) // size > 0: no error
	t := &tenantAuth{password: a.Password, saltKey: a.SaltKey, app: lru, derive: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))}
	t.instead.Store(a.TenantSecret == TenantSecretInstead)
	t.creds.Store(&map[string]scram.StoredCredentials{})
	return t
}

// loginKeys are the keys one login is checked against: own, the tenant's
// verifier (or, for a tenant without one, a mock no proof matches, with the
// tenant's mock salt), and whether the app secret may open the tenant too.
type loginKeys struct {
	own      scram.StoredCredentials
	hasOwn   bool
	appAllow bool
}

// keys returns tenant's login keys.
func (t *tenantAuth) keys(tenant string) loginKeys {
	if sc, ok := (*t.creds.Load())[tenant]; ok {
		return loginKeys{own: sc, hasOwn: true, appAllow: !t.instead.Load()}
	}
	return loginKeys{own: t.mock(tenant), appAllow: true}
}

// mock is what a tenant without a secret of its own is checked against:
// its salt is HMAC(SaltKey, tenant), the same on every instance and every
// try, and looks like any random salt to whoever lacks the key; its
// StoredKey is no client key's hash.
func (t *tenantAuth) mock(tenant string) scram.StoredCredentials {
	mac := func(label string) []byte {
		h := hmac.New(sha256.New, t.saltKey)
		h.Write([]byte(label))
		h.Write([]byte{0})
		h.Write([]byte(tenant))
		return h.Sum(nil)
	}
	key := mac("scram mock key")
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(mac("scram salt")[:TenantVerifierSaltLen]), Iters: TenantVerifierIterations},
		StoredKey:  key,
		ServerKey:  key,
	}
}

// appKeys returns the app secret's keys for kf's salt and iterations.
func (t *tenantAuth) appKeys(kf scram.KeyFactors) (scram.StoredCredentials, error) {
	t.mu.Lock()
	sc, ok := t.app.Get(kf)
	t.mu.Unlock()
	if ok {
		return sc, nil
	}
	// Outside the lock: PBKDF2 takes milliseconds (BenchmarkAppKeysDerive).
	t.derive <- struct{}{}
	defer func() { <-t.derive }()
	cl, err := scram.SHA256.NewClient("", t.password, "")
	if err != nil {
		return sc, errors.New("auth: password is not valid for SCRAM (SASLprep failed)")
	}
	if sc, err = cl.GetStoredCredentialsWithError(kf); err != nil {
		return sc, err
	}
	t.mu.Lock()
	t.app.Add(kf, sc)
	t.mu.Unlock()
	return sc, nil
}

// setCredentials replaces the tenants' own verifiers. A verifier that does
// not parse locks its tenant (nothing opens it but a fixed verifier; the
// app secret still does with TenantSecretBesides) rather than letting the
// app secret in where TenantSecretInstead says it may not: the returned
// error names those tenants.
func (t *tenantAuth) setCredentials(verifiers map[string]string) error {
	m := make(map[string]scram.StoredCredentials, len(verifiers))
	var bad []string
	for tenant, v := range verifiers {
		sc, err := ParseTenantVerifier(v)
		if err != nil {
			bad = append(bad, tenant)
			sc = t.mock(tenant) // no proof matches it
		}
		m[tenant] = sc
	}
	t.creds.Store(&m)
	if len(bad) > 0 {
		return fmt.Errorf("auth: invalid verifiers of tenants %s: those tenants' own secrets are refused until set again (pgtenant tenants passwd)", strings.Join(bad, ", "))
	}
	return nil
}

// checkApp checks the client's proof against the app secret's keys for
// the salt offered (k.own's), when the library found that it does not
// match k.own. clientFirst and clientFinal are the client's messages,
// serverFirst ours. It returns the server-final-message on success.
//
// xdg-go/scram checks one StoredKey per conversation; this is RFC 5802 §3's
// check for a second one:
//
//	AuthMessage     = client-first-message-bare + "," + server-first-message + "," + client-final-message-without-proof
//	ClientSignature = HMAC(StoredKey, AuthMessage)
//	ClientKey       = ClientProof XOR ClientSignature
//	valid iff H(ClientKey) == StoredKey; ServerSignature = HMAC(ServerKey, AuthMessage)
//
// The library has checked the nonce and the channel binding already. The
// keys are derived (or taken from the cache) even where the app secret may
// not open the tenant, so that a login costs the same either way.
func (t *tenantAuth) checkApp(k loginKeys, clientFirst, serverFirst, clientFinal string) (serverFinal string, ok bool) {
	app, err := t.appKeys(k.own.KeyFactors)
	if err != nil || !k.appAllow {
		return "", false
	}
	gs2 := strings.SplitN(clientFirst, ",", 3) // gs2-cbind-flag, [authzid], client-first-message-bare
	i := strings.LastIndex(clientFinal, ",p=")
	if len(gs2) != 3 || i < 0 {
		return "", false
	}
	bare := gs2[2]
	proof, err := base64.StdEncoding.DecodeString(clientFinal[i+3:])
	if err != nil {
		return "", false
	}
	authMsg := []byte(bare + "," + serverFirst + "," + clientFinal[:i])
	mac := hmac.New(sha256.New, app.StoredKey)
	mac.Write(authMsg)
	sig := mac.Sum(nil)
	if len(proof) != len(sig) {
		return "", false
	}
	for j := range sig {
		sig[j] ^= proof[j] // now ClientKey
	}
	if h := sha256.Sum256(sig); !hmac.Equal(h[:], app.StoredKey) {
		return "", false
	}
	mac = hmac.New(sha256.New, app.ServerKey)
	mac.Write(authMsg)
	return "v=" + base64.StdEncoding.EncodeToString(mac.Sum(nil)), true
}

// SetTenantCredentials replaces the tenants' own secrets (none until the
// first call) with verifiers, tenant to SCRAM verifier (see
// ParseTenantVerifier), for new logins. A verifier that does not parse
// makes its tenant's own secret fail (the app secret opens it as
// TenantSecret says); the error names those tenants. Without
// Auth.PerTenant it does nothing. Safe for concurrent use.
func (s *Server) SetTenantCredentials(verifiers map[string]string) error {
	if s.auth.tenants == nil {
		return nil
	}
	return s.auth.tenants.setCredentials(verifiers)
}

// TenantHasSecret reports whether tenant has a secret of its own in the
// last SetTenantCredentials. Safe for concurrent use.
func (s *Server) TenantHasSecret(tenant string) bool {
	if s.auth.tenants == nil {
		return false
	}
	_, ok := (*s.auth.tenants.creds.Load())[tenant]
	return ok
}

// SetTenantSecret changes Auth.TenantSecret (TenantSecretBesides or
// TenantSecretInstead) for new logins; other values are refused. Without
// Auth.PerTenant it does nothing. Safe for concurrent use.
func (s *Server) SetTenantSecret(mode string) error {
	switch mode {
	case "", TenantSecretBesides, TenantSecretInstead:
	default:
		return fmt.Errorf("auth: tenant secret %q: want %s or %s", mode, TenantSecretBesides, TenantSecretInstead)
	}
	if s.auth.tenants != nil {
		s.auth.tenants.instead.Store(mode == TenantSecretInstead)
	}
	return nil
}
