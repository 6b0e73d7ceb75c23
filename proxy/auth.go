package proxy

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// Auth methods.
const (
	AuthSCRAM = "scram-sha-256"
	AuthTrust = "trust"
)

// Auth is how clients prove they may use the router. The zero value is
// invalid: set Password or Verifier (SCRAM), or Method "trust".
type Auth struct {
	// Method is AuthSCRAM (default) or AuthTrust. Trust is refused on any
	// listener that is not loopback.
	Method string
	// Password is the app secret in plain text (for example from an
	// environment variable). Secret: never logged.
	Password string
	// Verifier is a stored SCRAM-SHA-256 verifier as in pg_authid.rolpassword
	// ("SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"); it lets the
	// router check the secret without holding it. Used when Password is empty.
	Verifier string

	// PerTenant lets a tenant log in with a secret of its own (set with
	// Server.SetTenantCredentials), which opens that tenant only, besides
	// or instead of the app secret (TenantSecret). It needs Password, not
	// Verifier: the app secret's keys are derived for each tenant's salt.
	PerTenant bool
	// TenantSecret says whether the app secret still opens a tenant that
	// has its own secret: TenantSecretBesides (the default) or
	// TenantSecretInstead. Change it at runtime with SetTenantSecret.
	TenantSecret string
	// SaltKey keys the salts offered, with PerTenant, for tenants without a
	// secret of their own (unknown tenants too): the same on every instance
	// given the same key, so that neither a salt nor its repeating tells
	// such a tenant from one with its own secret. At least 32 bytes;
	// secret.
	SaltKey []byte
}

// String masks the secrets.
func (a Auth) String() string {
	m := a.Method
	if m == "" {
		m = AuthSCRAM
	}
	switch {
	case a.Password != "" && a.PerTenant:
		return m + " (password set; per-tenant secrets " + cmp.Or(a.TenantSecret, TenantSecretBesides) + " the app secret)"
	case a.Password != "":
		return m + " (password set)"
	case a.Verifier != "":
		return m + " (verifier set)"
	}
	return m
}

// authenticator checks clients' secrets. It is built once at start, so no
// per-connection key derivation is needed: the server side of SCRAM costs a
// few HMACs per login.
type authenticator struct {
	trust  bool
	server *scram.Server // the app secret's; nil with tenants set
	// tenants, when not nil, checks tenants' own secrets besides the app
	// secret (Auth.PerTenant; tenantauth.go).
	tenants *tenantAuth
}

func newAuthenticator(a Auth) (*authenticator, error) {
	if err := a.validate(); err != nil {
		return nil, err
	}
	if a.Method == AuthTrust {
		return &authenticator{trust: true}, nil
	}
	if a.PerTenant {
		if _, err := scram.SHA256.NewClient("", a.Password, ""); err != nil {
			return nil, fmt.Errorf("auth: password is not valid for SCRAM (SASLprep failed)")
		}
		return &authenticator{tenants: newTenantAuth(a)}, nil
	}
	var creds scram.StoredCredentials
	if a.Password != "" {
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		cl, err := scram.SHA256.NewClient("", a.Password, "")
		if err != nil {
			return nil, fmt.Errorf("auth: password is not valid for SCRAM (SASLprep failed)")
		}
		creds, err = cl.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: 4096})
		if err != nil {
			return nil, fmt.Errorf("auth: derive SCRAM credentials: %w", err)
		}
	} else {
		var err error
		if creds, err = ParseSCRAMVerifier(a.Verifier); err != nil {
			return nil, err
		}
	}
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return &authenticator{server: srv}, nil
}

// ParseSCRAMVerifier parses a verifier in pg_authid's format,
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64 parts).
// Errors never echo the verifier.
func ParseSCRAMVerifier(v string) (scram.StoredCredentials, error) {
	bad := func(why string) (scram.StoredCredentials, error) {
		return scram.StoredCredentials{}, errors.New("auth: invalid SCRAM verifier: " + why +
			` (want "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", as in pg_authid)`)
	}
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	if !ok {
		return bad("missing SCRAM-SHA-256$ prefix")
	}
	kf, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("missing keys")
	}
	iterS, saltB64, ok := strings.Cut(kf, ":")
	if !ok {
		return bad("missing salt")
	}
	iters, err := strconv.Atoi(iterS)
	if err != nil || iters < 1 {
		return bad("bad iteration count")
	}
	storedB64, serverB64, ok := strings.Cut(keys, ":")
	if !ok {
		return bad("missing server key")
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltB64)
	stored, err2 := base64.StdEncoding.DecodeString(storedB64)
	server, err3 := base64.StdEncoding.DecodeString(serverB64)
	if err1 != nil || err2 != nil || err3 != nil || len(salt) == 0 || len(stored) != 32 || len(server) != 32 {
		return bad("bad base64 or key length")
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// SASL mechanisms offered to clients.
const (
	mechSCRAM     = "SCRAM-SHA-256"
	mechSCRAMPlus = "SCRAM-SHA-256-PLUS" // with tls-server-end-point channel binding; over TLS only
)

// authenticate runs the authentication exchange with the client and, on
// success, returns the messages that end it (SCRAM's AuthenticationSASLFinal,
// then AuthenticationOk), encoded but not sent: the caller sends them with
// the greeting once the session is set up, and not at all if it is refused
// (so a client whose tenant is refused hears what a wrong password hears,
// and the greeting is one write). user is only used in messages. Over TLS,
// SCRAM-SHA-256-PLUS is offered too, bound to the certificate the handshake
// presented (libpq's channel_binding=require). With per-tenant secrets the
// tenant's own secret opens it, and the app secret as TenantSecret says
// (tenantauth.go); cred says which one the client used (Credential*).
func (a *authenticator) authenticate(c net.Conn, user, tenant string, maxMsg int) (final []byte, cred string, err error) {
	if a.trust {
		final, err = (&pgproto3.AuthenticationOk{}).Encode(nil)
		return final, CredentialTrust, err
	}
	srv := a.server
	var keys loginKeys
	if a.tenants != nil {
		keys = a.tenants.keys(tenant)
		srv, _ = scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return keys.own, nil }) // never fails
	}
	cb := channelBinding(c)
	mechs := []string{mechSCRAM}
	conv := srv.NewConversation()
	if cb != nil {
		mechs = []string{mechSCRAMPlus, mechSCRAM}
		conv = srv.NewConversationWithChannelBinding(scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: cb})
	}
	if err := writeMsgs(c, &pgproto3.AuthenticationSASL{AuthMechanisms: mechs}); err != nil {
		return nil, "", err
	}

	body, err := readSASLMessage(c, maxMsg)
	if err != nil {
		return nil, "", err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return nil, "", clientErr(codeProtocolViolation, "malformed SASLInitialResponse", "", err)
	}
	// pgproto3 skips the data's length word; Postgres holds the client
	// to it (pq_getmsgbytes), and so do we.
	if n := int32(binary.BigEndian.Uint32(body[len(initial.AuthMechanism)+1:])); int(n) != len(initial.Data) {
		return nil, "", clientErr(codeProtocolViolation,
			fmt.Sprintf("malformed SASLInitialResponse: data length %d, but %d bytes follow", n, len(initial.Data)), "", nil)
	}
	if !slices.Contains(mechs, initial.AuthMechanism) {
		return nil, "", clientErr(codeProtocolViolation,
			fmt.Sprintf("client selected an invalid SASL authentication mechanism %q", truncate(initial.AuthMechanism, 32)),
			"The router offers "+strings.Join(mechs, " and ")+".", nil)
	}
	if err := checkGS2Flag(initial.AuthMechanism, initial.Data, cb != nil); err != nil {
		return nil, "", err
	}
	serverFirst, err := conv.Step(string(initial.Data))
	if err != nil {
		return nil, "", clientErr(codeProtocolViolation, "malformed SCRAM message", "", err)
	}
	if err := writeMsgs(c, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return nil, "", err
	}

	body, err = readSASLMessage(c, maxMsg)
	if err != nil {
		return nil, "", err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return nil, "", clientErr(codeProtocolViolation, "malformed SASLResponse", "", err)
	}
	if err := checkProof(resp.Data); err != nil {
		return nil, "", err
	}
	serverFinal, err := conv.Step(string(resp.Data))
	if serverFinal == scram.ErrChannelBindingsDontMatch {
		return nil, "", clientErr(codeInvalidPassword, "SCRAM channel binding check failed",
			"The TLS connection the client sees is not the router's: something between them terminates TLS.", err)
	}
	switch {
	case err == nil && conv.Valid() && a.tenants == nil:
		cred = CredentialApp
	case err == nil && conv.Valid() && keys.hasOwn: // a mock never matches
		cred = CredentialTenant
	case serverFinal == scram.ErrInvalidProof && a.tenants != nil:
		var ok bool
		if serverFinal, ok = a.tenants.checkApp(keys, string(initial.Data), serverFirst, string(resp.Data)); ok {
			cred = CredentialApp
		}
	}
	if cred == "" {
		return nil, "", passwordFailed(user, err)
	}
	final, _ = (&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}).Encode(nil)
	final, err = (&pgproto3.AuthenticationOk{}).Encode(final)
	return final, cred, err
}

// checkGS2Flag applies the channel binding rules of RFC 5802 (as PostgreSQL
// does) to the client-first-message's GS2 flag: "p=..." (binding in use)
// exactly with the -PLUS mechanism, and "y" (the client could bind but
// believes the server cannot) refused when -PLUS was offered, since then
// someone removed it from the offer on the way; and, as PostgreSQL, it
// refuses an authorization identity (the GS2 header's a=).
func checkGS2Flag(mech string, clientFirst []byte, offeredPlus bool) error {
	flag, rest, _ := strings.Cut(string(clientFirst), ",")
	authzid, _, _ := strings.Cut(rest, ",")
	switch {
	case authzid != "":
		// The SCRAM library would ignore it; Postgres refuses it.
		return clientErr(codeFeatureNotSupported, "client uses authorization identity, but it is not supported",
			"Leave the SCRAM authorization identity (a=) empty: the user name says who logs in.", nil)
	case mech == mechSCRAMPlus && !strings.HasPrefix(flag, "p="):
		return clientErr(codeProtocolViolation, "malformed SCRAM message",
			"The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.", nil)
	case mech == mechSCRAM && strings.HasPrefix(flag, "p="):
		return clientErr(codeProtocolViolation, "malformed SCRAM message",
			"The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.", nil)
	case flag == "y" && offeredPlus:
		return clientErr(codeProtocolViolation, "SCRAM channel binding negotiation error",
			"The client supports SCRAM channel binding but thinks the router does not; the router does.", nil)
	}
	return nil
}

// checkProof refuses a client-final-message whose proof (its last
// attribute, p=) is not the base64 of a SHA-256 sized value, as Postgres
// does ("Malformed proof in client-final-message"); the SCRAM library
// would fail on it with an "internal error" of its own.
func checkProof(clientFinal []byte) error {
	i := bytes.LastIndex(clientFinal, []byte(",p="))
	if i < 0 {
		return nil // no proof at all: the library says so
	}
	proof, err := base64.StdEncoding.DecodeString(string(clientFinal[i+3:]))
	if err != nil || len(proof) != sha256.Size {
		return clientErr(codeProtocolViolation, "malformed SCRAM message", "Malformed proof in client-final-message.", nil)
	}
	return nil
}

// readSASLMessage reads one 'p' message body, capped at max bytes.
func readSASLMessage(r io.Reader, max int) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != 'p' {
		return nil, clientErr(codeProtocolViolation,
			fmt.Sprintf("expected SASL response, got message type %q", hdr[0]), "", nil)
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 || n-4 > int64(max) {
		return nil, clientErr(codeProtocolViolation, fmt.Sprintf("invalid SASL message length %d", n), "", nil)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}

// writeMsgs encodes msgs into one buffer and writes it with one syscall.
func writeMsgs(w io.Writer, msgs ...pgproto3.BackendMessage) error {
	var buf []byte
	var err error
	for _, m := range msgs {
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	_, err = w.Write(buf)
	return err
}
