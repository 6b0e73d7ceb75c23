package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5" //nolint:gosec // Postgres' md5 password method, for upstreams still configured with it
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgtenant/pgtenant/internal/prefixconn"
	"github.com/pgtenant/pgtenant/resolver"
)

// maxLoginMessage caps the size of a message the upstream may send during
// login (ParameterStatus, ErrorResponse, SASL data are all small).
const maxLoginMessage = 1 << 20

// upstreamSCRAMCacheSize bounds the SCRAM clients kept: one per tenant role
// in use, each holding a few hundred bytes of derived keys.
const upstreamSCRAMCacheSize = 16384

// scramClients caches one SCRAM client per upstream role and password. A
// scram.Client keeps the keys it derived for each (salt, iterations), so a
// tenant's second and later logins skip the PBKDF2 key derivation (4096
// rounds of HMAC-SHA-256) that dominates the cost of a connection storm.
// Safe for concurrent use.
type scramClients struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *scram.Client] // guarded by mu
}

func newSCRAMClients(size int) *scramClients {
	lru, _ := simplelru.NewLRU[string, *scram.Client](size, nil) // size > 0: no error
	return &scramClients{lru: lru}
}

func (c *scramClients) get(user, password string) (*scram.Client, error) {
	key := user + "\x00" + password
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.lru.Get(key); ok {
		return cl, nil
	}
	// Postgres ignores the SCRAM user name (it authenticates the startup
	// user), and libpq sends it empty.
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return nil, errors.New("upstream password is not valid for SCRAM (SASLprep)")
	}
	c.lru.Add(key, cl)
	return cl, nil
}

// login connects to rt's upstream and logs in as the route's role, speaking
// the startup protocol itself: pgconn derives the SCRAM keys anew on every
// connect, which made a connection storm through the router CPU-bound on
// PBKDF2 (issue 4). pgconn's types are kept for what it returns. params, the
// startup parameters to forward, is handed over: login adds user and
// database to it. It returns once the upstream said ReadyForQuery; the
// connection is then the caller's. Errors the upstream sends come back as
// *pgconn.PgError.
func (s *Server) login(ctx context.Context, rt resolver.Route, params map[string]string) (*pgconn.HijackedConn, error) {
	conn, err := s.dial(ctx, "tcp", rt.Addr())
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	if d, has := ctx.Deadline(); has {
		_ = conn.SetDeadline(d)
	}
	raw := conn // the AfterFunc must not read conn, which TLS replaces
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	tlsCfg := s.upstreamOf(rt).routeTLS(rt)
	if tlsCfg != nil {
		// Not conn, err = ...: a failed handshake returns a nil conn, which
		// the deferred Close would call.
		tc, err := startTLS(conn, tlsCfg)
		if err != nil {
			return nil, fmt.Errorf("upstream TLS: %w", err)
		}
		conn = tc
	}
	if params == nil {
		params = make(map[string]string, 2)
	}
	params["user"], params["database"] = rt.User, rt.Database
	if err := writeFrontend(conn, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}); err != nil {
		return nil, err
	}

	// The upstream sends its greeting (a dozen ParameterStatus messages and
	// more) in one or two segments: buffered, it costs a read or two, not
	// two per message.
	br := loginReaders.Get().(*bufio.Reader)
	br.Reset(conn)
	defer func() { br.Reset(nil); loginReaders.Put(br) }()
	hj := &pgconn.HijackedConn{TLSConfig: tlsCfg, ParameterStatuses: make(map[string]string, 16)}
	var conv *scram.ClientConversation
	for {
		typ, body, err := readBackendMessage(br)
		if err != nil {
			return nil, err
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return nil, errors.New("upstream sent a malformed authentication request")
			}
			switch code := binary.BigEndian.Uint32(body); code {
			case pgproto3.AuthTypeOk:
				// A server that skips SASLFinal would skip proving it
				// knows the password: refuse, as libpq does.
				if conv != nil && !conv.Valid() {
					return nil, errors.New("upstream SCRAM: the server ended the exchange without proving its identity")
				}
			case pgproto3.AuthTypeCleartextPassword:
				err = writeFrontend(conn, &pgproto3.PasswordMessage{Password: rt.Password})
			case pgproto3.AuthTypeMD5Password:
				if len(body) != 8 {
					return nil, errors.New("upstream sent a malformed MD5 request")
				}
				err = writeFrontend(conn, &pgproto3.PasswordMessage{Password: md5Password(rt.User, rt.Password, body[4:8])})
			case pgproto3.AuthTypeSASL: // pick SCRAM-SHA-256
				var m pgproto3.AuthenticationSASL
				if err := m.Decode(body); err != nil {
					return nil, err
				}
				if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
					return nil, fmt.Errorf("upstream offers no SCRAM-SHA-256 (offers %q)", m.AuthMechanisms)
				}
				cl, err := s.scram.get(rt.User, rt.Password)
				if err != nil {
					return nil, err
				}
				conv = cl.NewConversation()
				first, err := conv.Step("")
				if err != nil {
					return nil, err
				}
				err = writeFrontend(conn, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
				if err != nil {
					return nil, err
				}
			case pgproto3.AuthTypeSASLContinue, pgproto3.AuthTypeSASLFinal:
				if conv == nil {
					return nil, errors.New("upstream continued a SASL exchange that was not started")
				}
				out, serr := conv.Step(string(body[4:]))
				if serr != nil {
					return nil, fmt.Errorf("upstream SCRAM: %w", serr)
				}
				if code == pgproto3.AuthTypeSASLContinue {
					err = writeFrontend(conn, &pgproto3.SASLResponse{Data: []byte(out)})
				} else if !conv.Valid() {
					return nil, errors.New("upstream SCRAM: the server's signature does not match")
				}
			default:
				return nil, fmt.Errorf("upstream asks for an unsupported authentication method (%d)", code)
			}
			if err != nil {
				return nil, err
			}
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			hj.ParameterStatuses[m.Name] = m.Value
		case 'K':
			var m pgproto3.BackendKeyData
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			hj.PID, hj.SecretKey = m.ProcessID, m.SecretKey
		case 'Z':
			if len(body) != 1 {
				return nil, errors.New("upstream sent a malformed ReadyForQuery")
			}
			hj.TxStatus = body[0]
			_ = conn.SetDeadline(time.Time{})
			if !stop() { // ctx ended meanwhile: its deadline may be set
				return nil, ctx.Err()
			}
			hj.Conn, ok = conn, true
			if n := br.Buffered(); n > 0 {
				// The upstream already said more (a notice, say): it
				// belongs to the client, ahead of what the socket holds.
				rest, _ := br.Peek(n)
				hj.Conn = prefixconn.New(conn, bytes.Clone(rest))
			}
			return hj, nil
		case 'E':
			var m pgproto3.ErrorResponse
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			return nil, &pgconn.PgError{
				Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
				Message: m.Message, Detail: m.Detail, Hint: m.Hint,
			}
		case 'N', 'v': // notices; NegotiateProtocolVersion (we asked for 3.0, no options)
		default:
			return nil, fmt.Errorf("upstream sent an unexpected message %q during login", typ)
		}
	}
}

// loginReaders are the buffered readers of upstream logins in progress.
var loginReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func writeFrontend(w io.Writer, m pgproto3.FrontendMessage) error {
	buf, err := m.Encode(nil)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// readBackendMessage reads one message from r.
func readBackendMessage(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[1:]))) - 4
	if n < 0 || n > maxLoginMessage {
		return 0, nil, fmt.Errorf("upstream sent a message of invalid length %d", n+4)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// md5Password is Postgres' md5 method: "md5" + md5(md5(password + user) + salt).
func md5Password(user, password string, salt []byte) string {
	h := md5.Sum([]byte(password + user)) //nolint:gosec // protocol-mandated
	inner := hex.EncodeToString(h[:])
	h = md5.Sum(append([]byte(inner), salt...)) //nolint:gosec // protocol-mandated
	return "md5" + hex.EncodeToString(h[:])
}
