// Package pgfront holds the startup-phase wire pieces that the providers'
// fakes (neontest's compute proxy, supabasetest's pooler, rdstest's front)
// put in front of a real local Postgres: the request codes, reading a
// startup packet, the refusal they send before hanging up, and the byte
// relay of a session once it is routed.
package pgfront

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Startup-phase request codes (PostgreSQL protocol, "Message Formats"), and
// the largest startup packet a front reads (Postgres' own limit).
const (
	SSLRequestCode    = 80877103
	GSSEncRequestCode = 80877104
	CancelRequestCode = 80877102
	MaxStartupPacket  = 10000
)

// Error is an ErrorResponse a front sends before hanging up.
type Error struct {
	Code, Msg string
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// ReadStartupPacket reads one length-prefixed startup-phase packet and
// returns it without the length word. A length out of range is an *Error
// (08P01).
func ReadStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > MaxStartupPacket {
		return nil, &Error{"08P01", fmt.Sprintf("invalid length of startup packet: %d", n)}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}

// Relay copies client to server and server to client until either
// direction ends, then closes closers (which must make the other direction
// end too) and waits for it. It returns the first direction's error, nil
// for a clean end (EOF, or a connection closed under it).
func Relay(client, server io.ReadWriter, closers ...io.Closer) error {
	errc := make(chan error, 2)
	pump := func(dst io.Writer, src io.Reader) {
		_, err := io.Copy(dst, src)
		errc <- err
	}
	go pump(server, client)
	go pump(client, server)
	err := <-errc
	for _, c := range closers {
		_ = c.Close()
	}
	<-errc
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
