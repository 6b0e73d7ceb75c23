package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelKey is the BackendKeyData the router hands to a client: the upstream
// backend's real process ID (so pg_backend_pid() matches, as on a direct
// connection) and a 32-bit secret of ours. The secret's top byte is the
// issuing router instance's ID, so a router that receives a key it did not
// issue can tell which instance owns it; the other 24 bits are random.
type cancelKey struct {
	pid    uint32
	secret uint32
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

// cancelRegistry maps the keys this router issued to their upstreams.
// Safe for concurrent use.
type cancelRegistry struct {
	instance byte
	mu       struct {
		sync.Mutex
		keys map[cancelKey]cancelTarget // guarded by mu
	}
}

func newCancelRegistry(instance byte) *cancelRegistry {
	r := &cancelRegistry{instance: instance}
	r.mu.keys = make(map[cancelKey]cancelTarget)
	return r
}

// register issues a fresh key for t. The caller must call release when the
// session ends.
func (r *cancelRegistry) register(t cancelTarget) (key cancelKey, release func()) {
	var b [4]byte
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		_, _ = rand.Read(b[1:])
		b[0] = r.instance
		key = cancelKey{pid: t.pid, secret: binary.BigEndian.Uint32(b[:])}
		if _, taken := r.mu.keys[key]; !taken {
			break
		}
	}
	r.mu.keys[key] = t
	return key, func() {
		r.mu.Lock()
		delete(r.mu.keys, key)
		r.mu.Unlock()
	}
}

func (r *cancelRegistry) lookup(pid uint32, secret []byte) (cancelTarget, bool) {
	if len(secret) != 4 {
		return cancelTarget{}, false
	}
	k := cancelKey{pid: pid, secret: binary.BigEndian.Uint32(secret)}
	r.mu.Lock()
	t, ok := r.mu.keys[k]
	r.mu.Unlock()
	return t, ok
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
		return nil, fmt.Errorf("upstream refused TLS")
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return tc, nil
}
