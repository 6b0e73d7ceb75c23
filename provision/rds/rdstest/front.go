package rdstest

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgfront"
)

const handshakeTimeout = 10 * time.Second

func (s *Server) acceptFront() {
	for {
		c, err := s.front.Accept()
		if err != nil {
			return
		}
		if !s.track(c) {
			_ = c.Close()
			return
		}
		s.wg.Go(func() {
			defer s.untrack(c)
			defer c.Close()
			if err := s.serveFront(c); err != nil {
				s.log.Debug("rdstest: front session", "err", err)
			}
		})
	}
}

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
	defer s.mu.Unlock()
	delete(s.mu.conns, c)
}

func refuse(w io.Writer, code, msg string) error {
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	_, _ = w.Write(b)
	return errors.New("refused: " + code + ": " + msg)
}

// serveFront is one session: SSLRequest → TLS with the endpoints'
// certificate → StartupMessage, whose user and database are mapped to the
// local ones by SNI → relay to the local server. Like RDS with
// rds.force_ssl=1 (the default from PostgreSQL 15), plaintext is refused.
func (s *Server) serveFront(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	var conn net.Conn = c
	var sni string
	for {
		pkt, err := pgfront.ReadStartupPacket(conn)
		if err != nil {
			return err
		}
		code := binary.BigEndian.Uint32(pkt[:4])
		switch code {
		case pgfront.SSLRequestCode:
			if _, ok := conn.(*tls.Conn); ok {
				return refuse(conn, "08P01", "SSLRequest after TLS")
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return err
			}
			tc := tls.Server(c, s.tlsConf)
			if err := tc.Handshake(); err != nil {
				return err
			}
			conn, sni = tc, tc.ConnectionState().ServerName
			continue
		case pgfront.GSSEncRequestCode:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return err
			}
			continue
		case pgfront.CancelRequestCode:
			return s.relayCancel(pkt)
		}
		if _, ok := conn.(*tls.Conn); !ok {
			return refuse(conn, "28000", "no pg_hba.conf entry for this host, no encryption (rds.force_ssl is on: connect with sslmode=verify-full)")
		}
		var sm pgproto3.StartupMessage
		if err := sm.Decode(pkt); err != nil {
			return refuse(conn, "08P01", err.Error())
		}
		names, ok := s.target(sni)
		if !ok {
			return refuse(conn, "08001", fmt.Sprintf("no available DB cluster or instance at %q (server name indication)", sni))
		}
		if sm.Parameters["user"] != names.user {
			return refuse(conn, "28P01", fmt.Sprintf("password authentication failed for user %q", sm.Parameters["user"]))
		}
		db := sm.Parameters["database"]
		if db == "" {
			db = names.user
		}
		if db != names.dbname {
			return refuse(conn, "3D000", fmt.Sprintf("database %q does not exist", db))
		}
		sm.Parameters["user"], sm.Parameters["database"] = names.role, names.database
		out, err := sm.Encode(nil)
		if err != nil {
			return err
		}
		up, err := net.DialTimeout(s.network, s.backend, handshakeTimeout)
		if err != nil {
			return refuse(conn, "08006", "backend unreachable")
		}
		defer up.Close()
		if !s.track(up) {
			return errors.New("closed")
		}
		defer s.untrack(up)
		if _, err := up.Write(out); err != nil {
			return err
		}
		_ = c.SetDeadline(time.Time{})
		return pgfront.Relay(conn, up, conn, up)
	}
}

// relayCancel passes a CancelRequest on to the local server (the key
// came from it, through the relay).
func (s *Server) relayCancel(pkt []byte) error {
	up, err := net.DialTimeout(s.network, s.backend, handshakeTimeout)
	if err != nil {
		return err
	}
	defer up.Close()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(pkt)+4))
	_, err = up.Write(append(b, pkt...))
	return err
}
