package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// versionConn is a client connection that rewrites the protocol version of
// the StartupMessage it sends (pgconn asks for 3.0 or 3.2 only) and keeps
// what it reads during the login.
type versionConn struct {
	net.Conn
	version uint32 // written over the startup message's version; 0: as sent
	mu      sync.Mutex
	sent    bool
	read    bytes.Buffer
}

func (c *versionConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	first := !c.sent
	c.sent = true
	c.mu.Unlock()
	if first && c.version != 0 && len(b) >= 8 {
		b = bytes.Clone(b)
		binary.BigEndian.PutUint32(b[4:8], c.version)
	}
	return c.Conn.Write(b)
}

func (c *versionConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.read.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

// negotiated returns the NegotiateProtocolVersion messages the router sent
// before ReadyForQuery: the version each offered, and its options.
func (c *versionConn) negotiated(t *testing.T) (versions []uint32, options [][]string) {
	t.Helper()
	c.mu.Lock()
	b := bytes.Clone(c.read.Bytes())
	c.mu.Unlock()
	for len(b) >= 5 {
		typ, n := b[0], int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || len(b) < 1+n {
			t.Fatalf("malformed message %q in the login", typ)
		}
		body := b[5 : 1+n]
		b = b[1+n:]
		switch typ {
		case 'v':
			versions = append(versions, binary.BigEndian.Uint32(body))
			var opts []string
			for _, o := range bytes.Split(body[8:], []byte{0}) {
				if len(o) > 0 {
					opts = append(opts, string(o))
				}
			}
			options = append(options, opts)
		case 'Z':
			return versions, options
		}
	}
	return versions, options
}

// Protocol 3.2 as Postgres 18 speaks it (docs/protocol-3.2.md): a 3.2
// client is served 3.2 with a 32-byte cancel key that cancels, also with
// an unknown protocol option (NegotiateProtocolVersion lists it); a later
// 3.x hears NegotiateProtocolVersion for 3.2; 3.1, which no server speaks,
// goes on as 3.0 without one, as Postgres does.
func TestProtocol32(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r := startRouter(t, newCatalogDB(t))
	tenant := newTenant("proto")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const v30, v31, v32, v33 = 3<<16 | 0, 3<<16 | 1, 3<<16 | 2, 3<<16 | 3
	for _, tt := range []struct {
		name      string
		params    string // connection string parameters
		send      uint32 // protocol version on the wire; 0: pgconn's
		secretLen int
		npv       []uint32
		options   []string
	}{
		{"3.0 (default)", "", 0, 4, nil, nil},
		{"max 3.2", "max_protocol_version=3.2", 0, 32, nil, nil},
		{"min 3.2", "min_protocol_version=3.2", 0, 32, nil, nil},
		{"3.2 with an unknown option", "max_protocol_version=3.2&_pq_.test_option=1", 0, 32, []uint32{v32}, []string{"_pq_.test_option"}},
		{"3.0 with an unknown option", "_pq_.test_option=1", 0, 4, []uint32{v30}, []string{"_pq_.test_option"}},
		{"3.3", "max_protocol_version=3.2", v33, 32, []uint32{v32}, nil},
		{"3.1", "max_protocol_version=3.2", v31, 4, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pgconn.ParseConfig(r.dsn(tenant, appSecret, tt.params))
			if err != nil {
				t.Fatal(err)
			}
			var vc *versionConn
			cfg.AfterNetConnect = func(_ context.Context, _ *pgconn.Config, c net.Conn) (net.Conn, error) {
				vc = &versionConn{Conn: c, version: tt.send}
				return vc, nil
			}
			pc, err := pgconn.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close(context.Background())
			if n := len(pc.SecretKey()); n != tt.secretLen {
				t.Errorf("cancel key secret of %d bytes, want %d", n, tt.secretLen)
			}
			versions, options := vc.negotiated(t)
			if len(versions) != len(tt.npv) || (len(versions) == 1 && versions[0] != tt.npv[0]) {
				t.Errorf("NegotiateProtocolVersion offered %x, want %x", versions, tt.npv)
			}
			if len(options) == 1 && !slices.Equal(options[0], tt.options) {
				t.Errorf("NegotiateProtocolVersion listed %q, want %q", options[0], tt.options)
			}
			// The key cancels, whatever its length.
			done := r.sleepUpstream(t, ctx, pc)
			at := time.Now()
			if err := pc.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; pgCode(err) != "57014" {
				t.Fatalf("cancelled query: %v, want 57014", err)
			}
			if d := time.Since(at); d > time.Second {
				t.Fatalf("cancel took %s", d)
			}
		})
	}
}
