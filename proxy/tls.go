package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/internal/prefixconn"
)

// Client TLS modes (TLSConfig.Mode).
const (
	// TLSModeDisable answers SSLRequest with 'N': plaintext only.
	TLSModeDisable = "disable"
	// TLSModeAllow terminates TLS for clients that ask for it (SSLRequest,
	// or PostgreSQL 17's direct TLS) and serves plaintext clients too.
	TLSModeAllow = "allow"
	// TLSModeRequired is TLSModeAllow but refuses plaintext sessions with
	// 28000. Plaintext cancel requests are still served: clients before
	// libpq 17 always send them unencrypted.
	TLSModeRequired = "required"
)

// TLSConfig is how the router terminates TLS from clients. The zero value
// disables it.
type TLSConfig struct {
	// Mode is TLSModeDisable (the default when empty), TLSModeAllow or
	// TLSModeRequired.
	Mode string
	// CertFile is a PEM file holding the server certificate, then any
	// intermediates. KeyFile is a PEM file holding its private key. Both are
	// needed unless Mode is disable. They are read by New, by
	// Server.ReloadTLS, and again when either file's modification time or
	// size changes (checked at most once a second, during a handshake).
	CertFile, KeyFile string
}

func (c TLSConfig) mode() string {
	if c.Mode == "" {
		return TLSModeDisable
	}
	return c.Mode
}

// alpnPostgres is the ALPN protocol of PostgreSQL 17+ (required for direct
// TLS, checked when offered after an SSLRequest).
const alpnPostgres = "postgresql"

// tlsRecordHandshake is the first byte of a TLS ClientHello: a client that
// starts with it uses direct TLS (sslnegotiation=direct).
const tlsRecordHandshake = 0x16

// certCheckInterval is how often handshakes look at the files' stamps.
const certCheckInterval = time.Second

// tlsTerminator holds the client-facing certificate and terminates TLS. It
// is safe for concurrent use; a nil *tlsTerminator means TLS is disabled.
type tlsTerminator struct {
	required          bool
	certFile, keyFile string
	log               *slog.Logger

	cur       atomic.Pointer[serverCert]
	nextCheck atomic.Int64 // unix nanoseconds: the first handshake at or after it checks the files

	// reloadMu serializes reloads, which read the files while holding it.
	// Handshakes never wait for it (they TryLock), so they keep using the
	// current certificate while a reload runs.
	reloadMu sync.Mutex
	seen     [2]fileStamp // guarded by reloadMu: the files as last read, good or bad
}

// serverCert is a loaded certificate and what channel binding needs of it.
type serverCert struct {
	cert *tls.Certificate
	// endPoint is its tls-server-end-point channel binding data (RFC 5929),
	// nil when that is undefined for its signature algorithm (Ed25519):
	// SCRAM-SHA-256-PLUS is then not offered.
	endPoint []byte
}

// fileStamp is what tells a changed file: modification time and size (or
// the stat error).
type fileStamp struct {
	mod  time.Time
	size int64
	err  string
}

func newTLSTerminator(cfg TLSConfig, log *slog.Logger) (*tlsTerminator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.mode() == TLSModeDisable {
		return nil, nil
	}
	t := &tlsTerminator{
		required: cfg.mode() == TLSModeRequired,
		certFile: cfg.CertFile,
		keyFile:  cfg.KeyFile,
		log:      log,
	}
	if err := t.reload(); err != nil {
		return nil, err
	}
	t.nextCheck.Store(time.Now().Add(certCheckInterval).UnixNano())
	return t, nil
}

// ReloadTLS reads the TLS certificate and key files again (cmd calls it on
// SIGHUP). On error the current certificate stays in use. Sessions already
// established are not affected either way: a certificate only matters
// during a handshake. With TLS disabled it does nothing.
func (s *Server) ReloadTLS() error {
	if s.tls == nil {
		return nil
	}
	return s.tls.reload()
}

// reload reads the files and, if they hold a valid pair, makes it current.
func (t *tlsTerminator) reload() error {
	t.reloadMu.Lock()
	defer t.reloadMu.Unlock()
	return t.reloadLocked()
}

func (t *tlsTerminator) reloadLocked() error {
	t.seen = t.stamps()
	sc, err := loadServerCert(t.certFile, t.keyFile)
	if err != nil {
		return err
	}
	old := t.cur.Swap(sc)
	if old != nil {
		t.log.Info("TLS certificate reloaded", "cert_file", t.certFile, "subject", sc.cert.Leaf.Subject.String(),
			"not_after", sc.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if time.Now().After(sc.cert.Leaf.NotAfter) {
		t.log.Warn("TLS certificate has expired; clients that verify it will refuse it",
			"cert_file", t.certFile, "not_after", sc.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func (t *tlsTerminator) stamps() [2]fileStamp {
	var s [2]fileStamp
	for i, f := range []string{t.certFile, t.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			s[i].err = err.Error()
			continue
		}
		s[i].mod, s[i].size = st.ModTime(), st.Size()
	}
	return s
}

// certificate returns the current certificate. At most once per
// certCheckInterval, the handshake calling it first checks whether the files
// changed, and reloads them if so; a bad new pair is logged and the current
// one kept.
func (t *tlsTerminator) certificate() *serverCert {
	now := time.Now().UnixNano()
	if next := t.nextCheck.Load(); now >= next && t.nextCheck.CompareAndSwap(next, now+int64(certCheckInterval)) {
		t.reloadIfChanged()
	}
	return t.cur.Load()
}

func (t *tlsTerminator) reloadIfChanged() {
	if !t.reloadMu.TryLock() {
		return // a reload is running
	}
	defer t.reloadMu.Unlock()
	if t.stamps() == t.seen {
		return
	}
	if err := t.reloadLocked(); err != nil {
		// Logged once per change of the files: t.seen now holds the bad ones.
		t.log.Warn("TLS certificate files changed but cannot be used; keeping the current certificate", "err", err)
	}
}

func loadServerCert(certFile, keyFile string) (*serverCert, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The error never quotes the key's bytes.
		return nil, fmt.Errorf("proxy: TLS certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &serverCert{cert: &cert, endPoint: endPointHash(cert.Leaf)}, nil
}

// endPointHash is the tls-server-end-point channel binding data of cert
// (RFC 5929 section 4.1): its hash under its signature's hash function,
// SHA-256 for MD5 and SHA-1. Nil where that is undefined.
func endPointHash(cert *x509.Certificate) []byte {
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil
	}
	h.Write(cert.Raw)
	return h.Sum(nil)
}

// tlsConn is a client connection after the TLS handshake.
type tlsConn struct {
	*tls.Conn
	// endPoint is the channel binding data of the certificate this handshake
	// presented (a reload may have changed the current one since).
	endPoint []byte
}

var errNoALPN = errors.New("direct TLS connection without ALPN protocol \"postgresql\" refused")

// handshake runs the server side of TLS on c under c's deadline. direct
// means the client started with a ClientHello (no SSLRequest): it must then
// offer ALPN "postgresql", as PostgreSQL requires; otherwise it gets a TLS
// alert. On error the returned conn must not be written to in plaintext.
func (t *tlsTerminator) handshake(c net.Conn, direct bool) (*tlsConn, error) {
	tc := &tlsConn{}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12, // PostgreSQL's default ssl_min_protocol_version
		NextProtos: []string{alpnPostgres},
		// As PostgreSQL: no session resumption. It also keeps channel
		// binding tied to the certificate of this very handshake.
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			sc := t.certificate()
			tc.endPoint = sc.endPoint
			return sc.cert, nil
		},
	}
	if direct {
		cfg.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if !slices.Contains(hi.SupportedProtos, alpnPostgres) {
				return nil, errNoALPN // the client gets an alert
			}
			return nil, nil
		}
	}
	tc.Conn = tls.Server(c, cfg)
	if err := tc.Handshake(); err != nil {
		return tc, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// start looks at the first byte of a new connection when TLS is enabled. A
// TLS handshake record means direct TLS, which is terminated at once. It
// returns the connection to go on with and the reader of the first startup
// packet (which replays the peeked byte).
func (t *tlsTerminator) start(c net.Conn) (net.Conn, io.Reader, error) {
	if t == nil {
		return c, c, nil
	}
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return c, c, err
	}
	if first[0] != tlsRecordHandshake {
		return c, io.MultiReader(bytes.NewReader(first[:]), c), nil
	}
	tc, err := t.handshake(prefixconn.New(c, first[:]), true)
	return tc, tc, err
}

// answerSSLRequest answers an SSLRequest: 'N' when TLS is disabled, else 'S'
// and the handshake.
func (t *tlsTerminator) answerSSLRequest(c net.Conn) (net.Conn, error) {
	if t == nil {
		_, err := c.Write([]byte{'N'})
		return c, err
	}
	if _, err := c.Write([]byte{'S'}); err != nil {
		return c, err
	}
	return t.handshake(c, false)
}

// admit checks a StartupMessage's transport against the mode and notes the
// TLS server name (SNI) the client sent.
func (t *tlsTerminator) admit(c net.Conn, p *startupPacket) error {
	tc, ok := c.(*tlsConn)
	if ok {
		p.sni = tc.ConnectionState().ServerName
		return nil
	}
	if t != nil && t.required && p.kind == kindStartup {
		return clientErr(codeInvalidAuthSpec, "TLS is required: the router refuses unencrypted connections",
			"Connect with sslmode=require (or verify-full).", nil)
	}
	return nil
}

// channelBinding returns the tls-server-end-point data of c's handshake, nil
// if c is not TLS or the certificate allows no binding.
func channelBinding(c net.Conn) []byte {
	if tc, ok := c.(*tlsConn); ok {
		return tc.endPoint
	}
	return nil
}
