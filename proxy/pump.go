package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// pumpBufSize is the read size of one direction. Postgres messages are mostly
// small; 16 KiB holds a typical batch of DataRows in one read.
const pumpBufSize = 16 << 10

// bufPool holds the pumps' read buffers. A pump on a plain TCP socket takes
// one only while data is ready to read and gives it back after writing it
// on, so an idle session holds no buffer at all: with many held, mostly idle
// connections, that is most of a session's memory.
var bufPool = sync.Pool{New: func() any { b := make([]byte, pumpBufSize); return &b }}

// lazyReader reads a connection into pooled buffers (see bufPool). On
// anything but a *net.TCPConn (a TLS connection buffers internally anyway)
// it falls back to Read, holding a pooled buffer while it blocks; so does
// a lazyReader{conn: c} made without newLazyReader, which allocates
// nothing (for a reader that blocks only briefly).
type lazyReader struct {
	conn net.Conn
	raw  syscall.RawConn

	// State of one raw read, kept here so that the callback is a method
	// value made once, not a closure allocated per read.
	fn   func(fd uintptr) bool
	bp   *[]byte
	n    int32         // of the last read
	serr syscall.Errno // of the last read; 0: none
}

func newLazyReader(c net.Conn) *lazyReader {
	r := &lazyReader{conn: c}
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			r.raw = raw
			r.fn = r.readFD
			return r
		}
	}
	return r
}

// readFD is the raw read: it borrows a buffer only when the socket has data
// (a would-block read returns it at once and waits for readiness).
func (r *lazyReader) readFD(fd uintptr) bool {
	r.bp = bufPool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *r.bp)
		r.n, r.serr = int32(n), 0
		if err != nil {
			r.serr = err.(syscall.Errno) // syscall.Read returns no other error
		}
		if r.serr != syscall.EINTR {
			break
		}
	}
	if r.serr == syscall.EAGAIN {
		bufPool.Put(r.bp)
		r.bp = nil
		return false
	}
	return true
}

// read returns the next bytes from the connection. They stay valid until
// the next call to read or done.
func (r *lazyReader) read() ([]byte, error) {
	if r.raw == nil {
		// A blocking Read needs its buffer throughout; from the pool, so
		// that a pump that runs briefly (a pooled transaction's) does not
		// allocate one each time.
		if r.bp == nil {
			r.bp = bufPool.Get().(*[]byte)
		}
		n, err := r.conn.Read(*r.bp)
		return (*r.bp)[:n], err
	}
	r.done()
	if err := r.raw.Read(r.fn); err != nil { // deadline or closed
		r.done()
		return nil, err
	}
	switch {
	case r.serr != 0:
		r.done()
		return nil, os.NewSyscallError("read", r.serr)
	case r.n <= 0:
		r.done()
		return nil, io.EOF
	}
	return (*r.bp)[:r.n], nil
}

// done gives the current buffer back to the pool.
func (r *lazyReader) done() {
	if r.bp != nil {
		bufPool.Put(r.bp)
		r.bp = nil
	}
}

// pump copies src to dst until either fails, adding the bytes read to n.
// It deliberately does not use io.Copy: between two *net.TCPConn that
// becomes splice(2), which costs more syscalls than a plain read/write loop
// for the small messages Postgres traffic is made of.
//
// n counts bytes before they are written: the upstream may answer them (and
// the idle tracker compare n with its ReadyForQuery) before Write returns.
func pump(dst io.Writer, src net.Conn, n *atomic.Int64) error {
	r := newLazyReader(src)
	defer r.done()
	for {
		b, rerr := r.read()
		if len(b) > 0 {
			n.Add(int64(len(b)))
			nw, werr := dst.Write(b)
			r.done()
			if werr != nil {
				n.Add(int64(nw - len(b)))
				return werr
			}
		}
		if rerr != nil {
			return rerr
		}
	}
}
