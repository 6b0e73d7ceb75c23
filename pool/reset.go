package pool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/prefixconn"
)

// readers buffer the replies Reset and Exec read.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// maxResetMessage caps the messages Reset decodes (ParameterStatus,
// ErrorResponse, ReadyForQuery: all small); others are skipped unread.
const maxResetMessage = 1 << 20

// Reset readies s for another client. Unless txStatus, the status of the
// server's last ReadyForQuery, is 'I' (so also for 'T', 'E' for a failed
// transaction, or 0 if unknown) it sends ROLLBACK; then query
// (DefaultResetQuery in session pooling), unless empty. Both go out in one write and are answered
// in one round trip. It reads the replies up to their last ReadyForQuery,
// which must say 'I', and records in s.Params the ParameterStatus values
// the server reports meanwhile (DISCARD ALL reports the settings it
// restores). Bytes it reads past the replies stay first for s.Conn's next
// reader (s.Conn then replays them).
//
// The server must be at ReadyForQuery with nothing in flight: a connection
// whose client left mid-query cannot be reset this way. ctx bounds the
// exchange (through the connection's deadline, cleared afterwards). On
// error the connection's state is unknown: close it.
func (s *Server) Reset(ctx context.Context, txStatus byte, query string) error {
	var out []byte
	n := 0
	if txStatus != 'I' {
		out, _ = (&pgproto3.Query{String: "ROLLBACK"}).Encode(out)
		n++
	}
	if query != "" {
		var err error
		if out, err = (&pgproto3.Query{String: query}).Encode(out); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return nil
	}
	if query != "" {
		clear(s.Settings)
		clear(s.Prepared)
		s.Tag = 0
	}
	return s.exchange(ctx, out, n)
}

// Exec runs query, a simple query, on s and reads its replies through the
// ReadyForQuery, recording ParameterStatus values in s.Params. An
// ErrorResponse comes back as a *pgconn.PgError with the connection still
// at ReadyForQuery (usable if TxStatus is 'I'); any other error leaves the
// connection's state unknown: close it. As for Reset, nothing may be in
// flight, and ctx bounds the exchange.
func (s *Server) Exec(ctx context.Context, query string) error {
	out, err := (&pgproto3.Query{String: query}).Encode(nil)
	if err != nil {
		return err
	}
	return s.exchange(ctx, out, 1)
}

// Rollback ends the transaction s is in, as Reset(ctx, 'T', "") does.
func (s *Server) Rollback(ctx context.Context) error { return s.Reset(ctx, 'T', "") }

// exchange writes out, simple queries, and reads the replies up to the
// n-th ReadyForQuery.
func (s *Server) exchange(ctx context.Context, out []byte, n int) error {
	conn := s.Conn
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	err := s.exchangeIO(out, n)
	if !stop() && err == nil {
		err = ctx.Err() // the deadline may now be in the past: the conn is unusable
	}
	if err == nil {
		_ = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			err = fmt.Errorf("pool: reset: %w (%w)", cerr, err)
		} else if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			// The connection's deadline fired before ctx's timer.
			err = fmt.Errorf("pool: reset: %w (%w)", context.DeadlineExceeded, err)
		}
	}
	return err
}

func (s *Server) exchangeIO(out []byte, n int) error {
	if _, err := s.Conn.Write(out); err != nil {
		return err
	}
	// Buffered: a message is one read, not two (header, then body), and
	// the replies to a reset usually come in one. Whatever the buffer holds
	// past the last ReadyForQuery (something the server said on its own: a
	// notice, a FATAL) is left for the connection's next reader.
	br := readers.Get().(*bufio.Reader)
	br.Reset(s.Conn)
	defer func() {
		if k := br.Buffered(); k > 0 {
			rest, _ := br.Peek(k)
			s.Conn = prefixconn.New(s.Conn, bytes.Clone(rest))
		}
		br.Reset(nil)
		readers.Put(br)
	}()
	var hdr [5]byte
	var pgErr *pgconn.PgError // the first ErrorResponse; the replies are read through regardless
	for n > 0 {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		typ := hdr[0]
		size := int64(int32(binary.BigEndian.Uint32(hdr[1:]))) - 4
		if size < 0 {
			return fmt.Errorf("pool: reset: server sent a message of invalid length %d", size+4)
		}
		switch typ {
		case 'S', 'E', 'Z':
		default: // CommandComplete, notices, notifications, rows of a reset query that returns some
			if _, err := br.Discard(int(size)); err != nil {
				return err
			}
			continue
		}
		if size > maxResetMessage {
			return fmt.Errorf("pool: reset: server sent a message of length %d", size+4)
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(br, body); err != nil {
			return err
		}
		switch typ {
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				return err
			}
			if s.Params == nil {
				s.Params = make(map[string]string)
			}
			s.Params[m.Name] = m.Value
		case 'E':
			var m pgproto3.ErrorResponse
			if err := m.Decode(body); err != nil {
				return err
			}
			if pgErr == nil {
				pgErr = &pgconn.PgError{
					Severity: m.Severity, SeverityUnlocalized: m.SeverityUnlocalized, Code: m.Code,
					Message: m.Message, Detail: m.Detail, Hint: m.Hint,
				}
			}
		case 'Z':
			if len(body) != 1 {
				return errors.New("pool: reset: server sent a malformed ReadyForQuery")
			}
			s.TxStatus = body[0]
			n--
		}
	}
	if pgErr != nil {
		return pgErr
	}
	if s.TxStatus != 'I' {
		return fmt.Errorf("pool: reset: server is still in a transaction (status %q)", s.TxStatus)
	}
	return nil
}
