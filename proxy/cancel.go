package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelKey is the BackendKeyData the router hands to a client: a process
// ID of the router's own choosing, whose top byte names the router
// instance that issued it (see newPID and keyOwner), and a secret that is
// random in every bit: 4 bytes for a protocol 3.0 client, 32 for a 3.2
// one (docs/protocol-3.2.md). The upstream backend's real process ID stays
// the router's: a tenant that reads it in pg_stat_activity learns nothing
// of the key.
type cancelKey struct {
	pid    uint32
	secret []byte
}

// The cancel key layout lives in newPID and keyOwner, and nowhere else.
//
// The instance ID sits in the process ID, not the secret, so that all of
// the secret's bits are entropy. A client can forge the ID, but that only
// sends its guess to another instance, which looks the key up in its own
// registry (the full secret, compared in constant time) behind the same
// per-address rate limit as any other: a guess costs one request wherever
// it lands, and the instance ID buys the guesser nothing.

const (
	// shortSecret is the secret length for protocol 3.0 (and 3.1) clients:
	// the protocol's fixed 4 bytes.
	shortSecret = 4
	// longSecret is the secret length for clients of protocol 3.2 and
	// later: what Postgres 18 hands out (MAX_CANCEL_KEY_LENGTH), 256 bits.
	longSecret = 32
	// pidSerialBits are the process ID's bits below the instance ID: a
	// random number unique among the instance's live keys.
	pidSerialBits = 24
)

// newPID returns a fresh process ID for a key issued by instance.
func newPID(instance uint8) uint32 {
	var b [4]byte
	_, _ = rand.Read(b[1:]) // never fails
	b[0] = instance
	return binary.BigEndian.Uint32(b[:])
}

// newSecret returns a fresh random secret of n bytes.
func newSecret(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return b
}

// keyOwner returns the ID of the instance that issued the key (pid,
// secret) as a client sent it back; ok is false for a key no instance
// could have issued (a secret outside the protocol's 4 to 256 bytes).
func keyOwner(pid uint32, secret []byte) (instance uint8, ok bool) {
	if len(secret) < shortSecret || len(secret) > maxCancelSecret {
		return 0, false
	}
	return uint8(pid >> pidSerialBits), true
}

// cancelTarget is what is needed to cancel the upstream query.
type cancelTarget struct {
	addr      string // upstream host:port
	pid       uint32 // upstream's key
	secret    []byte
	tlsConfig *tls.Config // nil: plain TCP
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	// follow, for a pooled client, holds the target of the server
	// connection it holds now (nil: none); the fields above are unused.
	follow *atomic.Pointer[cancelTarget]
}

// issued is a key of the registry: its secret and where it cancels.
type issued struct {
	secret []byte
	target cancelTarget
}

// cancelRegistry maps the keys this router issued to their upstreams.
// Safe for concurrent use.
type cancelRegistry struct {
	instance byte
	mu       struct {
		sync.Mutex
		// By the key's process ID; guarded by mu. Pointers, to the
		// sessions' own memory (registerIn): a held session then costs
		// the map a pointer, not the entry.
		keys map[uint32]*issued
	}
}

func newCancelRegistry(instance byte) *cancelRegistry {
	r := &cancelRegistry{instance: instance}
	r.mu.keys = make(map[uint32]*issued)
	return r
}

// register issues a fresh key for t with a secret of secretLen bytes
// (shortSecret or longSecret). The caller must call release when the
// session ends.
func (r *cancelRegistry) register(t cancelTarget, secretLen int) (key cancelKey, release func()) {
	return r.registerIn(&issued{target: t}, secretLen)
}

// registerIn is register for the target in it, which the registry keeps
// (and sets the secret of) until release.
func (r *cancelRegistry) registerIn(it *issued, secretLen int) (key cancelKey, release func()) {
	key.secret = newSecret(max(secretLen, shortSecret))
	it.secret = key.secret
	r.mu.Lock()
	defer r.mu.Unlock()
	for { // a process ID unique among this instance's live keys
		key.pid = newPID(r.instance)
		if _, taken := r.mu.keys[key.pid]; !taken {
			break
		}
	}
	r.mu.keys[key.pid] = it
	return key, func() {
		r.mu.Lock()
		delete(r.mu.keys, key.pid)
		r.mu.Unlock()
	}
}

// lookup returns the target of the key (pid, secret) if this registry
// issued it. The secret is compared in constant time (its length is no
// secret: the client chose its protocol version).
func (r *cancelRegistry) lookup(pid uint32, secret []byte) (cancelTarget, bool) {
	r.mu.Lock()
	k, ok := r.mu.keys[pid]
	var it issued
	if ok {
		it = *k // under the lock: the session may end meanwhile
	}
	r.mu.Unlock()
	if !ok || subtle.ConstantTimeCompare(it.secret, secret) != 1 {
		return cancelTarget{}, false
	}
	return it.target, true
}

func (r *cancelRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mu.keys)
}

// send delivers a CancelRequest for t's upstream backend and waits until the
// upstream closes the connection (it does once it has signalled the backend).
func (t cancelTarget) send(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dial := t.dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", t.addr)
	if err != nil {
		return fmt.Errorf("cancel: dial %s: %w", t.addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if t.tlsConfig != nil {
		if c, err = startTLS(c, t.tlsConfig); err != nil {
			return fmt.Errorf("cancel: %w", err)
		}
	}
	buf, err := (&pgproto3.CancelRequest{ProcessID: t.pid, SecretKey: t.secret}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(buf); err != nil {
		return fmt.Errorf("cancel: write: %w", err)
	}
	_, _ = io.Copy(io.Discard, c) // the server closes when done
	return nil
}

// startTLS performs Postgres' SSLRequest negotiation on c and wraps it.
func startTLS(c net.Conn, cfg *tls.Config) (net.Conn, error) {
	buf, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Write(buf); err != nil {
		return nil, err
	}
	var resp [1]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return nil, err
	}
	if resp[0] != 'S' {
		return nil, errors.New("upstream refused TLS (the server runs with ssl off; turn it on there, or configure plaintext toward it)")
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return tc, nil
}

// CancelForwarding is how router instances sharing a catalog hand each
// other CancelRequests. A load balancer may send a client's CancelRequest to
// another instance than the one holding its session; that instance reads
// the owner's ID from the key (keyOwner), looks up the owner's peer address
// (PeerAddr: the catalog's instance registry) and forwards the request
// there, where ServePeers takes it and cancels as usual.
//
// A forward is one frame on a TCP connection of its own, the receiver
// closing it once the upstream was signalled (as Postgres closes a cancel
// connection). Every field is covered by an HMAC-SHA256 under Secret, so
// a host without the secret cannot inject cancels; the timestamp and nonce
// keep a recorded frame from being replayed:
//
//	offset  size  field
//	0       4     "PGTC"
//	4       1     version, 1
//	5       1     the instance the frame is for (the key's owner)
//	6       1     the instance that sent it
//	7       8     the sender's clock, Unix milliseconds, big-endian
//	15      16    random nonce
//	31      n     the CancelRequest as the client sent it (its own length
//	              first: 16 bytes for a 4-byte secret, at most 268)
//	31+n    32    HMAC-SHA256(Secret, bytes 0 to 31+n)
//
// The receiver refuses (closes without acting, counted as rejected) a
// frame that is malformed, whose MAC does not match, that is for another
// instance, whose timestamp is more than 30 s from its own clock, or whose
// nonce it has seen within that window.
type CancelForwarding struct {
	// Secret authenticates forwards both ways; every instance of the
	// cluster has the same. Empty: forwarding is off (keys of other
	// instances are ignored, as unknown keys are).
	Secret []byte
	// PeerAddr returns the peer address of the live instance with ID id;
	// false when no live instance has it (the request is then dropped).
	PeerAddr func(ctx context.Context, id uint8) (addr string, ok bool)
	// Observe counts what became of forwards (the Forward* outcomes),
	// sent and received. Nil counts nothing.
	Observe func(outcome string)
	// Dial dials peers. Nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Outcomes CancelForwarding.Observe is called with.
const (
	ForwardForwarded    = "forwarded"     // sent to the owning instance, which took it
	ForwardFailed       = "failed"        // the owner is registered but was not reached
	ForwardUnknownOwner = "unknown_owner" // no live instance has the key's ID: dropped
	ForwardReceived     = "received"      // an authenticated forward, cancelled here as usual
	ForwardRejected     = "rejected"      // a forward refused (see CancelForwarding)
)

// MinForwardSecret is the shortest CancelForwarding.Secret accepted.
const MinForwardSecret = 32

const (
	forwardMagic    = "PGTC"
	forwardVersion  = 1
	forwardHeader   = 31 // magic, version, to, from, timestamp, nonce
	maxForwardSkew  = 30 * time.Second
	maxCancelSecret = 256 // protocol 3.2's longest cancel key secret
	maxPeerConns    = 64  // forwards being served at once; more are refused
	forwardTimeout  = 10 * time.Second
	maxReplayNonces = 1 << 16
)

func (f *CancelForwarding) validate() error {
	switch {
	case len(f.Secret) == 0:
		return nil
	case len(f.Secret) < MinForwardSecret:
		return fmt.Errorf("proxy: cancel forwarding secret is %d bytes; want at least %d", len(f.Secret), MinForwardSecret)
	case f.PeerAddr == nil:
		return errors.New("proxy: cancel forwarding needs PeerAddr")
	}
	return nil
}

// forwarder is a Server's side of CancelForwarding.
type forwarder struct {
	cfg      CancelForwarding
	instance uint8
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	replay   replayGuard
	lastWarn atomic.Int64 // Unix nanoseconds of the last rejection logged as a warning
}

// newForwarder returns nil when forwarding is off.
func newForwarder(cfg CancelForwarding, instance uint8) (*forwarder, error) {
	if err := cfg.validate(); err != nil || len(cfg.Secret) == 0 {
		return nil, err
	}
	f := &forwarder{cfg: cfg, instance: instance, dial: cfg.Dial}
	if f.dial == nil {
		f.dial = (&net.Dialer{}).DialContext
	}
	f.replay.mu.seen = make(map[[16]byte]time.Time)
	return f, nil
}

func (f *forwarder) observe(outcome string) {
	if f.cfg.Observe != nil {
		f.cfg.Observe(outcome)
	}
}

// forwardFrame is one forward, decoded.
type forwardFrame struct {
	to, from uint8
	at       time.Time
	nonce    [16]byte
	pid      uint32
	secret   []byte
}

// encode lays f out as CancelForwarding describes and signs it with key.
func (f *forwardFrame) encode(key []byte) []byte {
	b := make([]byte, 0, forwardHeader+12+len(f.secret)+sha256.Size)
	b = append(b, forwardMagic...)
	b = append(b, forwardVersion, f.to, f.from)
	b = binary.BigEndian.AppendUint64(b, uint64(f.at.UnixMilli()))
	b = append(b, f.nonce[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(12+len(f.secret)))
	b = binary.BigEndian.AppendUint32(b, cancelRequestCode)
	b = binary.BigEndian.AppendUint32(b, f.pid)
	b = append(b, f.secret...)
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(b)
}

// errForwardMAC is a frame signed with another secret (or altered).
var errForwardMAC = errors.New("MAC does not match (another cluster secret, or not a pgtenant peer)")

// readForward reads one frame from r and checks its layout and MAC; the
// other checks are accept's.
func readForward(r io.Reader, key []byte) (forwardFrame, error) {
	var f forwardFrame
	var hdr [forwardHeader + 4]byte
	// The magic and version first: anything else is refused at once,
	// not after waiting for a whole header.
	if _, err := io.ReadFull(r, hdr[:5]); err != nil {
		return f, fmt.Errorf("malformed: %w", err)
	}
	if string(hdr[:4]) != forwardMagic || hdr[4] != forwardVersion {
		return f, errors.New("malformed: not a version 1 forward")
	}
	if _, err := io.ReadFull(r, hdr[5:]); err != nil {
		return f, fmt.Errorf("malformed: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[forwardHeader:])
	if n < 16 || n > 12+maxCancelSecret {
		return f, fmt.Errorf("malformed: CancelRequest of %d bytes", n)
	}
	buf := make([]byte, len(hdr)+int(n)-4+sha256.Size)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(r, buf[len(hdr):]); err != nil {
		return f, fmt.Errorf("malformed: %w", err)
	}
	body, sum := buf[:len(buf)-sha256.Size], buf[len(buf)-sha256.Size:]
	m := hmac.New(sha256.New, key)
	m.Write(body)
	if !hmac.Equal(m.Sum(nil), sum) {
		return f, errForwardMAC
	}
	req := body[forwardHeader:]
	if binary.BigEndian.Uint32(req[4:8]) != cancelRequestCode {
		return f, errors.New("malformed: not a CancelRequest")
	}
	f.to, f.from = hdr[5], hdr[6]
	f.at = time.UnixMilli(int64(binary.BigEndian.Uint64(hdr[7:15])))
	copy(f.nonce[:], hdr[15:forwardHeader])
	f.pid = binary.BigEndian.Uint32(req[8:12])
	f.secret = req[12:]
	return f, nil
}

// accept reads a frame from r and returns it if it is authentic, for this
// instance, recent and not seen before.
func (f *forwarder) accept(r io.Reader, now time.Time) (forwardFrame, error) {
	fr, err := readForward(r, f.cfg.Secret)
	switch {
	case err != nil:
		return fr, err
	case fr.to != f.instance:
		return fr, fmt.Errorf("for instance %d, this is %d", fr.to, f.instance)
	case fr.at.Before(now.Add(-maxForwardSkew)) || fr.at.After(now.Add(maxForwardSkew)):
		return fr, fmt.Errorf("timestamp %s is more than %s from this instance's clock", fr.at.UTC().Format(time.RFC3339Nano), maxForwardSkew)
	}
	return fr, f.replay.check(fr.nonce, fr.at.Add(maxForwardSkew), now)
}

// replayGuard remembers the nonces of accepted frames while their
// timestamps are within the window, so that each is accepted once.
type replayGuard struct {
	mu struct {
		sync.Mutex
		seen  map[[16]byte]time.Time // nonce → when it leaves the window; guarded by mu
		sweep time.Time              // next sweep of nonces out of the window
	}
}

func (g *replayGuard) check(nonce [16]byte, until, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.After(g.mu.sweep) || len(g.mu.seen) >= maxReplayNonces {
		for n, u := range g.mu.seen {
			if now.After(u) {
				delete(g.mu.seen, n)
			}
		}
		g.mu.sweep = now.Add(maxForwardSkew)
	}
	if _, ok := g.mu.seen[nonce]; ok {
		return errors.New("replayed: nonce seen before")
	}
	if len(g.mu.seen) >= maxReplayNonces {
		return errors.New("too many forwards within the window")
	}
	g.mu.seen[nonce] = until
	return nil
}

// forward sends the key (pid, secret), which instance owner issued, to
// owner's peer address and waits until the owner has cancelled (it
// closes the connection). Failures are counted and logged, never told to
// the client, which gets no answer either way.
func (f *forwarder) forward(ctx context.Context, owner uint8, pid uint32, secret []byte, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	addr, ok := f.cfg.PeerAddr(ctx, owner)
	if !ok {
		f.observe(ForwardUnknownOwner)
		log.Debug("cancel request for an instance not in the registry ignored", "pid", pid, "instance", owner)
		return
	}
	fr := forwardFrame{to: owner, from: f.instance, at: time.Now(), pid: pid, secret: secret}
	_, _ = rand.Read(fr.nonce[:])
	if err := f.send(ctx, addr, fr.encode(f.cfg.Secret)); err != nil {
		f.observe(ForwardFailed)
		log.Warn("cancel request not forwarded to its instance", "pid", pid, "instance", owner, "peer", addr, "err", err)
		return
	}
	f.observe(ForwardForwarded)
	log.Debug("cancel request forwarded to its instance", "pid", pid, "instance", owner, "peer", addr)
}

func (f *forwarder) send(ctx context.Context, addr string, frame []byte) error {
	c, err := f.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(frame); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c) // the owner closes once it has cancelled
	return err
}

// reject counts a refused forward and logs it: as a warning at most once a
// minute (a flood from a host without the secret must not flood the log),
// else at debug level.
func (f *forwarder) reject(log *slog.Logger, err error) {
	f.observe(ForwardRejected)
	now := time.Now().UnixNano()
	if last := f.lastWarn.Load(); now-last >= int64(time.Minute) && f.lastWarn.CompareAndSwap(last, now) {
		log.Warn("forwarded cancel request rejected (further rejections this minute are logged at debug level)", "err", err)
		return
	}
	log.Debug("forwarded cancel request rejected", "err", err)
}

// ServePeers takes forwarded CancelRequests from the other instances of the
// cluster on ln (see CancelForwarding) until ctx ends, then closes ln and
// returns once the forwards it took are done. Keep ctx alive through the
// drain of Serve, so that clients' cancels still reach draining sessions.
// It needs Config.Forward.Secret.
func (s *Server) ServePeers(ctx context.Context, ln net.Listener) error {
	if s.fwd == nil {
		_ = ln.Close()
		return errors.New("proxy: ServePeers needs Config.Forward.Secret")
	}
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, maxPeerConns)
	for {
		c, err := s.accept(ctx, ln, "peer accept")
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case slots <- struct{}{}:
		default:
			_ = c.Close()
			s.fwd.reject(s.log.With("peer", c.RemoteAddr().String()), fmt.Errorf("%d forwards already being served", maxPeerConns))
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			s.servePeer(ctx, c)
		})
	}
}

// servePeer takes one forward on c and cancels as for a client's own
// CancelRequest.
func (s *Server) servePeer(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	_ = c.SetDeadline(time.Now().Add(s.cfg.handshakeTimeout()))
	log := s.log.With("peer", c.RemoteAddr().String())
	fr, err := s.fwd.accept(c, time.Now())
	if err != nil {
		s.fwd.reject(log, err)
		return
	}
	s.fwd.observe(ForwardReceived)
	log = log.With("from_instance", fr.from)
	if !s.cancelLocal(ctx, fr.pid, fr.secret, log) {
		s.cfg.Metrics.cancelRequest("unknown")
		log.Debug("forwarded cancel request with unknown key ignored", "pid", fr.pid)
	}
}
