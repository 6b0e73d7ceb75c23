// Package prefixconn replays bytes already read from a connection before
// reading more from it: for a reader that read past the messages it owned
// (a buffered login or reset), or that peeked at a first byte (TLS).
package prefixconn

import "net"

// Conn is a net.Conn whose reads return Prefix first. Everything but Read
// goes to the embedded connection.
type Conn struct {
	net.Conn
	prefix []byte
}

// New returns c reading prefix first. prefix is used as it is, not copied.
func New(c net.Conn, prefix []byte) *Conn { return &Conn{Conn: c, prefix: prefix} }

// Read returns what is left of the prefix, then reads the connection.
func (p *Conn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
