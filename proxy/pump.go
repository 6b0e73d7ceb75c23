package proxy

import (
	"io"
	"sync/atomic"
)

// pumpBufSize is the read size of one direction. Postgres messages are mostly
// small; 16 KiB holds a typical batch of DataRows in one read.
const pumpBufSize = 16 << 10

// pump copies src to dst until either fails, adding the bytes read to n.
// It deliberately does not use io.Copy: between two *net.TCPConn that
// becomes splice(2), which costs more syscalls than a plain read/write loop
// for the small messages Postgres traffic is made of.
//
// n counts bytes before they are written: the upstream may answer them (and
// the idle tracker compare n with its ReadyForQuery) before Write returns.
func pump(dst io.Writer, src io.Reader, n *atomic.Int64) error {
	buf := make([]byte, pumpBufSize)
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			n.Add(int64(nr))
			if nw, werr := dst.Write(buf[:nr]); werr != nil {
				n.Add(int64(nw - nr))
				return werr
			}
		}
		if rerr != nil {
			return rerr
		}
	}
}
