package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Request codes of the startup phase (protocol docs, "Message Formats").
const (
	sslRequestCode    = 80877103 // 1234<<16 | 5679
	gssEncRequestCode = 80877104 // 1234<<16 | 5680
	cancelRequestCode = 80877102 // 1234<<16 | 5678
)

// newestMinor is the newest minor version of protocol 3 the router speaks
// to clients: 3.2 (Postgres 18's), see docs/protocol-3.2.md.
const newestMinor = 2

// DefaultMaxStartupPacket is Postgres' own MAX_STARTUP_PACKET_LENGTH.
const DefaultMaxStartupPacket = 10000

type startupKind uint8

const (
	kindStartup startupKind = iota + 1
	kindSSLRequest
	kindGSSENCRequest
	kindCancel
)

// startupPacket is one decoded packet of the startup phase.
type startupPacket struct {
	kind startupKind

	// kindStartup
	major, minor uint16
	params       map[string]string // ordinary parameters (user, database, options, GUCs)
	protoOptions []string          // "_pq_." protocol options, reported back as unrecognized
	sni          string            // TLS server name (SNI) the client sent, if any

	// kindCancel
	pid    uint32
	secret []byte
}

var errStartupTooShort = errors.New("startup packet too short")

// startupReader reads length-prefixed startup-phase packets from r
// through a small buffer: a packet is one read, not two (its length, then
// the rest). A client that follows the protocol sends nothing past a
// packet before it is answered, so the buffer normally ends with the
// packet; what it holds past one is in pending (negotiate refuses it).
type startupReader struct {
	r       io.Reader
	buf     [256]byte
	pending []byte // read past the last packet: a part of buf
}

// next reads the next packet and returns its body (after the length
// word), refusing lengths outside [8, max] before allocating anything.
func (sr *startupReader) next(max int) ([]byte, error) {
	if err := sr.fill(4); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(sr.pending)))
	if n < 8 || n > int64(max) {
		return nil, clientErr(codeProtocolViolation,
			fmt.Sprintf("invalid length of startup packet: %d bytes (allowed 8 to %d)", n, max),
			"Connect with a PostgreSQL client library speaking protocol 3.", nil)
	}
	sr.pending = sr.pending[4:]
	body := make([]byte, n-4)
	k := copy(body, sr.pending)
	sr.pending = sr.pending[k:]
	if k < len(body) { // the rest straight into body: never past the packet
		if _, err := io.ReadFull(sr.r, body[k:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return body, nil
}

// fill reads until pending holds at least n bytes (n ≤ len(buf)), as
// io.ReadFull does: io.EOF if the connection ends before any byte,
// io.ErrUnexpectedEOF if it ends within them.
func (sr *startupReader) fill(n int) error {
	have := copy(sr.buf[:], sr.pending)
	for have < n {
		k, err := sr.r.Read(sr.buf[have:])
		have += k
		if have >= n {
			break
		}
		if err != nil {
			if errors.Is(err, io.EOF) && have > 0 {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	sr.pending = sr.buf[:have]
	return nil
}

// parseStartup decodes the body (after the length word) of a startup-phase
// packet. It never panics on any input (see FuzzParseStartup).
func parseStartup(body []byte) (startupPacket, error) {
	if len(body) < 4 {
		return startupPacket{}, clientErr(codeProtocolViolation, "invalid startup packet: too short", "", errStartupTooShort)
	}
	code := binary.BigEndian.Uint32(body)
	rest := body[4:]
	switch code {
	case sslRequestCode:
		return startupPacket{kind: kindSSLRequest}, nil
	case gssEncRequestCode:
		return startupPacket{kind: kindGSSENCRequest}, nil
	case cancelRequestCode:
		// 4-byte key in protocol 3.0, up to 256 bytes in 3.2.
		if len(rest) < 8 || len(rest) > 4+256 {
			return startupPacket{}, clientErr(codeProtocolViolation, "invalid cancel request length", "", nil)
		}
		return startupPacket{
			kind:   kindCancel,
			pid:    binary.BigEndian.Uint32(rest),
			secret: bytes.Clone(rest[4:]),
		}, nil
	}
	major, minor := uint16(code>>16), uint16(code)
	if major != 3 {
		return startupPacket{}, clientErr(codeFeatureNotSupported,
			fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.%d", major, minor, newestMinor),
			"Use a client library that speaks protocol 3 (every PostgreSQL client since 7.4 does).", nil)
	}
	p := startupPacket{kind: kindStartup, major: major, minor: minor, params: make(map[string]string, 8)}
	// Parameters: (name NUL value NUL)* NUL.
	for {
		if len(rest) == 0 {
			return startupPacket{}, errBadLayout
		}
		if rest[0] == 0 {
			if len(rest) != 1 {
				return startupPacket{}, errBadLayout
			}
			break
		}
		name, r1, ok := cutNUL(rest)
		if !ok {
			return startupPacket{}, errBadLayout
		}
		value, r2, ok := cutNUL(r1)
		if !ok {
			return startupPacket{}, errBadLayout
		}
		rest = r2
		if strings.HasPrefix(name, "_pq_.") {
			p.protoOptions = append(p.protoOptions, name)
			continue
		}
		p.params[name] = value
	}
	return p, nil
}

var errBadLayout = clientErr(codeProtocolViolation,
	"invalid startup packet layout: expected NUL-terminated name/value pairs and a final NUL", "", nil)

func cutNUL(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// parseBool reads a boolean startup parameter as Postgres' parse_bool
// does: any prefix of true, false, yes or no, "on", "of(f)", 1 or 0,
// ignoring case. valid is false for anything else.
func parseBool(v string) (b, valid bool) {
	l := strings.ToLower(v)
	prefixOf := func(word string) bool { return l != "" && strings.HasPrefix(word, l) }
	switch {
	case prefixOf("true"), prefixOf("yes"), l == "on", l == "1":
		return true, true
	case prefixOf("false"), prefixOf("no"), l == "of", l == "off", l == "0":
		return false, true
	}
	return false, false
}
