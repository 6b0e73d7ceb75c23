package supabasetest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgfront"
)

// The pooler: the fake's Supavisor (and the projects' direct hosts). It
// terminates TLS, finds the project from the user name postgres.<ref> or
// the host db.<ref>.supabase.co (§6), rewrites the startup packet to the
// project's local role and database and relays bytes; the local Postgres
// runs the SCRAM exchange with the project's password.

const handshakeTimeout = 30 * time.Second

// certFor returns the pooler's certificate for pooler hosts and issues
// (once) a certificate for each direct host db.<ref>.supabase.co, which
// no wildcard covers.
func (s *Server) certFor(pooler tls.Certificate) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if _, ok := directRef(hello.ServerName); !ok {
			return &pooler, nil
		}
		if c, ok := s.certs.Load(hello.ServerName); ok {
			return c.(*tls.Certificate), nil
		}
		leaf, err := s.ca.Issue(hello.ServerName)
		if err != nil {
			return nil, err
		}
		c, _ := s.certs.LoadOrStore(hello.ServerName, &leaf.TLS)
		return c.(*tls.Certificate), nil
	}
}

// directRef pulls <ref> out of db.<ref>.supabase.co.
func directRef(host string) (string, bool) {
	rest, ok := strings.CutPrefix(strings.ToLower(host), "db.")
	if !ok {
		return "", false
	}
	ref, ok := strings.CutSuffix(rest, ".supabase.co")
	return ref, ok && ref != "" && !strings.Contains(ref, ".")
}

func (s *Server) acceptPooler() {
	for {
		c, err := s.poolLn.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !s.track(c) {
			_ = c.Close()
			continue
		}
		s.wg.Go(func() { s.servePooler(c) })
	}
}

// track registers c so Close can end it; false once closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
	_ = c.Close()
}

// poolerError is an ErrorResponse the pooler sends before hanging up.
type poolerError = pgfront.Error

// servePooler handles one client connection and always closes it.
func (s *Server) servePooler(raw net.Conn) {
	defer s.untrack(raw)
	var client net.Conn = raw
	err := func() error {
		_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
		var sni string
		for {
			pkt, err := pgfront.ReadStartupPacket(client)
			if err != nil {
				return err
			}
			code := binary.BigEndian.Uint32(pkt)
			switch {
			case code == pgfront.SSLRequestCode && client == raw:
				if _, err := raw.Write([]byte{'S'}); err != nil {
					return err
				}
				tc := tls.Server(raw, s.tlsCfg)
				if err := tc.HandshakeContext(s.ctx); err != nil {
					return err
				}
				client, sni = tc, tc.ConnectionState().ServerName
			case code == pgfront.GSSEncRequestCode && client == raw:
				if _, err := raw.Write([]byte{'N'}); err != nil {
					return err
				}
			case code == pgfront.CancelRequestCode:
				return nil // not forwarded (a simplification)
			case code>>16 == 3:
				return s.startup(client, sni, pkt)
			default:
				return &poolerError{Code: "0A000", Msg: fmt.Sprintf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
			}
		}
	}()
	var pe *poolerError
	if errors.As(err, &pe) {
		buf, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: pe.Code, Message: pe.Msg}).Encode(nil)
		_, _ = client.Write(buf)
	}
	if err != nil {
		s.log.Debug("supabase fake pooler: connection ended", "err", err)
	}
}

// startup routes a StartupMessage (pkt, without its length) and relays
// the session until either side hangs up.
func (s *Server) startup(client net.Conn, sni string, pkt []byte) error {
	var sm pgproto3.StartupMessage
	if err := sm.Decode(pkt); err != nil {
		return &poolerError{Code: "08P01", Msg: "invalid startup packet"}
	}
	user, db := sm.Parameters["user"], sm.Parameters["database"]
	if db == "" {
		db = user
	}
	var ref string
	if r, ok := directRef(sni); ok {
		if user != "postgres" {
			return &poolerError{Code: "28000", Msg: fmt.Sprintf("password authentication failed for user %q", user)}
		}
		ref = r
	} else {
		role, r, ok := strings.Cut(user, ".")
		if !ok || role != "postgres" {
			return &poolerError{Code: "XX000", Msg: "Tenant or user not found"}
		}
		ref = r
	}
	s.mu.Lock()
	p := s.mu.projects[ref]
	var v Project
	if p != nil && !p.removed {
		v = s.viewLocked(p)
	}
	s.mu.Unlock()
	switch {
	case v.Ref == "":
		return &poolerError{Code: "XX000", Msg: "Tenant or user not found"}
	case v.Status != "ACTIVE_HEALTHY":
		return &poolerError{Code: "57P03", Msg: "the database system is starting up"}
	case db != "postgres":
		return &poolerError{Code: "3D000", Msg: fmt.Sprintf("database %q does not exist", db)}
	}
	sm.Parameters["user"], sm.Parameters["database"] = localName(ref), localName(ref)
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", s.pgAddr)
	if err != nil {
		return &poolerError{Code: "08006", Msg: "could not reach the database"}
	}
	if !s.track(up) {
		_ = up.Close()
		return errors.New("closed")
	}
	defer s.untrack(up)
	buf, err := sm.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := up.Write(buf); err != nil {
		return err
	}
	_ = client.SetDeadline(time.Time{})
	return pgfront.Relay(client, up, client, up)
}
