//go:build linux

package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The event relay: a plaintext session that Serve started relays without a
// goroutine of its own while it is idle. Each direction (client → upstream,
// upstream → client) runs on a goroutine only while its source socket has
// data: it reads the socket without blocking, writes on with the ordinary
// (blocking) Write, and once the socket has nothing more it parks: its
// goroutine returns. The socket stays in the Serve's epoll set
// (edge-triggered, so parking costs no system call), and the poller's one
// goroutine starts the direction again when more data comes. The last direction to end runs the session's end (ended) as a
// continuation. BENCHMARKS.md §11 has what this saves.

// poller is one Serve's epoll set and the goroutine that waits on it.
type poller struct {
	srv  *Server
	ctx  context.Context // Serve's connCtx
	epfd int
	evfd int // an eventfd in the set, written by close to end the loop

	mu   sync.RWMutex
	dirs []*pumpDir // the registered directions, by their socket's fd
	gen  uint32     // guarded by mu; the last generation handed out

	closing atomic.Bool
	loopWG  sync.WaitGroup // the loop
	runs    sync.WaitGroup // goroutines that may still touch the set (see run)
}

func newPoller(s *Server, ctx context.Context) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	// Generation 0 marks the eventfd; directions get 1 and up.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	p := &poller{srv: s, ctx: ctx, epfd: epfd, evfd: evfd}
	p.loopWG.Go(p.loop)
	return p, nil
}

// loop starts the directions whose sockets became readable. It runs until
// close.
func (p *poller) loop() {
	var events [128]unix.EpollEvent
	for {
		n, err := unix.EpollWait(p.epfd, events[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			panic("proxy: epoll_wait: " + err.Error()) // only with a broken epfd, i.e. a bug of ours
		}
		for _, ev := range events[:n] {
			if ev.Pad == 0 {
				if p.closing.Load() {
					return
				}
				continue
			}
			p.mu.RLock()
			var d *pumpDir
			if fd := int(ev.Fd); fd < len(p.dirs) {
				d = p.dirs[fd]
			}
			p.mu.RUnlock()
			if d != nil && d.gen == uint32(ev.Pad) { // else: a socket since closed, its fd maybe reused
				d.schedule()
			}
		}
	}
}

// close ends the loop once no direction can touch the set any more, and
// closes it. Every session relayed on p must have ended.
func (p *poller) close() {
	p.runs.Wait()
	p.closing.Store(true)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(p.evfd, one[:])
	p.loopWG.Wait()
	_ = unix.Close(p.epfd)
	_ = unix.Close(p.evfd)
}

// Direction states. A direction runs on at most one goroutine at a time:
// whoever moves it from parked to running starts it, and only its own
// goroutine moves it back to parked or to ended (or the other direction,
// ending the session, from parked to ended).
const (
	dirRunning int32 = iota // on a goroutine (or being set up)
	dirParked               // armed in the epoll set, no goroutine
	dirEnded
)

// pumpDir is one direction of an event-relayed session.
type pumpDir struct {
	ev       *evRelay
	toClient bool
	src      net.Conn        // the other direction's src is where it writes
	raw      syscall.RawConn // of src
	fd       int32           // src's, for the poller's table
	gen      uint32          // this registration's generation
	state    atomic.Int32
	notified atomic.Bool // an edge (or a wake) came: see park
	// err is why d ended (read by the session's end), or, set before d
	// ever ran, why it could not be registered.
	err error

	bp   *[]byte // the buffer of the read in progress (bufPool)
	n    int32
	serr syscall.Errno
}

// evRelay is the event-relayed part of a liveSession. Its zero value (p nil)
// means the session relays on goroutines (relay), as TLS sessions and those
// of ServeConn do.
type evRelay struct {
	p       *poller
	ls      *liveSession
	in, out pumpDir      // client → upstream, upstream → client
	f       framer       // of out: to stop at a message boundary when killed
	left    atomic.Int32 // directions not yet ended
	ending  atomic.Bool  // the session is ending: every direction stops

	// What end needs of serveConn, which returned long before (the rest
	// is the same for all of a Serve's sessions: poller.srv, poller.ctx).
	begin time.Time
	id    uint64
	wg    *sync.WaitGroup
}

// errWouldBlock is a read's "nothing to read now".
var errWouldBlock = errors.New("would block")

// canEventRelay reports whether the connections can be event-relayed: plain
// TCP both ways (a TLS connection buffers what it decrypted, which epoll
// cannot see).
func canEventRelay(p *poller, client, upstream net.Conn) bool {
	if p == nil {
		return false
	}
	_, ok1 := client.(*net.TCPConn)
	_, ok2 := upstream.(*net.TCPConn)
	return ok1 && ok2
}

// initEv prepares ev to relay client and upstream on p (before the session
// is visible to kill: see start).
func (ev *evRelay) init(p *poller, ls *liveSession, client, upstream net.Conn) {
	ev.p, ev.ls = p, ls
	ev.in.setup(ev, false, client, upstream)
	ev.out.setup(ev, true, upstream, client)
	ev.left.Store(2)
}

func (d *pumpDir) setup(ev *evRelay, toClient bool, src, dst net.Conn) {
	d.ev, d.toClient, d.src = ev, toClient, src
	d.state.Store(dirRunning) // the starter's until it parks it
	raw, err := src.(*net.TCPConn).SyscallConn()
	if err != nil {
		d.err = err
		return
	}
	d.raw = raw
}

// dst is where d writes: the other direction's source.
func (d *pumpDir) dst() net.Conn {
	if d.toClient {
		return d.ev.in.src
	}
	return d.ev.out.src
}

// start hands the session to the poller: from now on end runs exactly
// once, when both directions have ended, on the goroutine of the last one;
// it does what serveConn does after relay. The session must end at once
// if ctx ended already (Serve's hook may have missed it).
func (ev *evRelay) start(begin time.Time, id uint64, wg *sync.WaitGroup) {
	ev.begin, ev.id, ev.wg = begin, id, wg
	ev.p.runs.Add(1) // this goroutine arms the set below
	defer ev.p.runs.Done()
	for _, d := range []*pumpDir{&ev.in, &ev.out} {
		if d.err == nil {
			if err := d.raw.Control(func(fd uintptr) { d.registerFD(fd) }); err != nil {
				d.err = err
			}
		}
	}
	if ev.p.ctx.Err() != nil {
		ev.ending.Store(true)
	}
	for _, d := range []*pumpDir{&ev.in, &ev.out} {
		if d.err != nil {
			d.state.Store(dirParked)
			d.schedule() // runs, fails on the socket and ends the session
			continue
		}
		if !d.park() {
			d.p().runs.Add(1)
			go d.run()
		}
	}
}

func (d *pumpDir) p() *poller { return d.ev.p }

func (d *pumpDir) registerFD(fd uintptr) {
	p := d.p()
	p.mu.Lock()
	if int(fd) >= len(p.dirs) {
		p.dirs = append(p.dirs, make([]*pumpDir, int(fd)+1-len(p.dirs)+len(p.dirs)/2)...)
	}
	p.gen++
	if p.gen == 0 {
		p.gen = 1
	}
	d.fd, d.gen = int32(fd), p.gen
	p.dirs[fd] = d
	p.mu.Unlock()
	// Edge-triggered, armed once: a park costs no epoll_ctl. An edge that
	// comes while d runs is kept in notified (schedule, park). Data there
	// already is reported at once.
	e := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: int32(d.gen)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &e); err != nil {
		d.err = os.NewSyscallError("epoll_ctl", err)
	}
}

// unregister takes d out of the poller's table and its socket out of the
// epoll set (a closed socket left it already).
func (d *pumpDir) unregister() {
	p := d.p()
	if d.gen != 0 {
		p.mu.Lock()
		if int(d.fd) < len(p.dirs) && p.dirs[d.fd] == d {
			p.dirs[d.fd] = nil
		}
		p.mu.Unlock()
	}
	if d.raw != nil {
		epfd := d.p().epfd
		_ = d.raw.Control(func(fd uintptr) { _ = unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	}
}

// schedule starts d on a goroutine if it is parked, and otherwise leaves
// word in notified that it must not park on what it read so far.
func (d *pumpDir) schedule() {
	d.notified.Store(true)
	if d.state.CompareAndSwap(dirParked, dirRunning) {
		d.p().runs.Add(1)
		go d.run()
	}
}

// park hands d to the poller and reports true, or reports false when d
// must go on running (on its caller's goroutine) instead: the session is
// ending or was killed, and nobody else took d meanwhile.
func (d *pumpDir) park() bool {
	d.state.Store(dirParked)
	// After the store: the poller, kill and end set their flag, then
	// schedule, which sees parked; or we see their flag here. (An edge
	// that came before the read that would block leaves notified set for
	// nothing: one more read, which would block too.)
	if d.notified.Swap(false) || d.ev.ending.Load() || d.toClient && d.ev.ls.killed.Load() != nil {
		return !d.state.CompareAndSwap(dirParked, dirRunning)
	}
	return true
}

// readFD reads without blocking into a pooled buffer, taken only when there
// is data.
func (d *pumpDir) readFD(fd uintptr) {
	d.bp = bufPool.Get().(*[]byte)
	var n int
	var err error
	for {
		n, err = syscall.Read(int(fd), *d.bp)
		if err != syscall.EINTR {
			break
		}
	}
	d.n = int32(n)
	d.serr = 0
	if err != nil {
		d.serr = err.(syscall.Errno) // syscall.Read returns no other error
	}
	if d.serr == syscall.EAGAIN {
		bufPool.Put(d.bp)
		d.bp = nil
	}
}

// read returns what src has now, errWouldBlock if nothing, or its end.
func (d *pumpDir) read() ([]byte, error) {
	d.done()
	if err := d.raw.Control(func(fd uintptr) { d.readFD(fd) }); err != nil { // closed
		d.done()
		return nil, err
	}
	switch {
	case d.serr == syscall.EAGAIN:
		return nil, errWouldBlock
	case d.serr != 0:
		d.done()
		return nil, os.NewSyscallError("read", d.serr)
	case d.n <= 0:
		d.done()
		return nil, io.EOF
	}
	return (*d.bp)[:d.n], nil
}

func (d *pumpDir) done() {
	if d.bp != nil {
		bufPool.Put(d.bp)
		d.bp = nil
	}
}

// run pumps while src has data, then parks d (or ends it).
func (d *pumpDir) run() {
	defer d.p().runs.Done()
	ls := d.ev.ls
	for {
		if d.ev.ending.Load() {
			d.finish(nil)
			return
		}
		if d.err != nil { // could not be registered
			d.finish(d.err)
			return
		}
		b, rerr := d.read()
		if rerr == errWouldBlock {
			if d.toClient && ls.killed.Load() != nil {
				d.finish(d.killAtBoundary())
				return
			}
			if d.park() {
				return
			}
			continue
		}
		if len(b) > 0 {
			if d.toClient {
				f := &d.ev.f
				f.feed(b)
				if f.ready != 0 { // before the write: the client cannot have answered yet
					ls.noteReady(f.ready)
					f.ready = 0
				}
				nw, werr := d.dst().Write(b)
				d.done()
				ls.bytesOut.Add(int64(nw))
				if werr != nil {
					d.finish(werr)
					return
				}
			} else {
				// Counted before the write: the upstream may answer (and
				// the idle tracker compare) before Write returns.
				ls.bytesIn.Add(int64(len(b)))
				nw, werr := d.dst().Write(b)
				d.done()
				if werr != nil {
					ls.bytesIn.Add(int64(nw - len(b)))
					d.finish(werr)
					return
				}
			}
		}
		if rerr != nil {
			if d.toClient && ls.killed.Load() != nil {
				rerr = errKilled // could not reach a boundary: just close
			}
			d.finish(rerr)
			return
		}
		if d.toClient && ls.killed.Load() != nil && d.ev.f.atBoundary() {
			d.finish(d.killAtBoundary())
			return
		}
	}
}

// killAtBoundary ends a killed session's upstream → client direction: at a
// message boundary it tells the client why; mid-message it lets the
// upstream finish the message first, for at most a second, reading as the
// goroutine relay does (a kill is rare; this goroutine may block).
func (d *pumpDir) killAtBoundary() error {
	ls, f := d.ev.ls, &d.ev.f
	if !f.atBoundary() {
		_ = d.src.SetReadDeadline(time.Now().Add(time.Second))
		r := lazyReader{conn: d.src}
		defer r.done()
		for !f.atBoundary() {
			b, err := r.read()
			if len(b) > 0 {
				f.feed(b)
				nw, werr := d.dst().Write(b)
				ls.bytesOut.Add(int64(nw))
				if werr != nil {
					return werr
				}
			}
			if err != nil {
				return errKilled // could not reach a boundary: just close
			}
		}
	}
	_ = writeMsgs(d.dst(), toErrorResponse(ls.killed.Load()))
	return errKilled
}

// finish ends d with err and, as the relay does, closes the connections
// so that the other direction ends too: it is ended here if parked, and
// ends itself on its failing socket or the ending flag if running.
func (d *pumpDir) finish(err error) {
	ev := d.ev
	d.done()
	d.err = err
	d.state.Store(dirEnded)
	ev.ending.Store(true)
	client, upstream := ev.in.src, ev.out.src
	if d.toClient && err == errKilled {
		// Our ErrorResponse is on its way: half-close, not a reset.
		_ = client.(*net.TCPConn).CloseWrite()
	} else {
		_ = client.Close()
	}
	_ = upstream.Close()
	other := &ev.in
	if d == other {
		other = &ev.out
	}
	n := int32(1)
	if other.state.CompareAndSwap(dirParked, dirEnded) {
		n++
	}
	if ev.left.Add(-n) == 0 {
		ev.in.unregister()
		ev.out.unregister()
		_ = client.Close()
		ev.end(ev.result())
	}
}

// end is what serveConn does after relay: release, count and log the
// session, and tell Serve it is over.
func (ev *evRelay) end(err error) {
	ls, s := ev.ls, ev.p.srv
	ls.killedBy = ls.killed.Load() // why the router ended it, if it did (metrics)
	// The session's logger is made again rather than held while it idles.
	_ = s.ended(ev.p.ctx, ls.session, s.log.With("conn", ev.id, "remote", ls.remote), ev.begin, err)
	if ev.wg != nil {
		ev.wg.Done()
	}
}

// result is the session's error as relay returns it.
func (ev *evRelay) result() error {
	err, err2 := ev.in.err, ev.out.err
	switch {
	case err2 == errKilled:
		return errKilled
	case isQuietEOF(err):
		err = nil
	}
	if err == nil && err2 != nil && !isQuietEOF(err2) {
		err = err2
	}
	return err
}

// wakeOut starts the upstream → client direction if it is parked, to
// see a kill.
func (ev *evRelay) wakeOut() { ev.out.schedule() }

// abort ends the session at once (Serve's hard stop).
func (ev *evRelay) abort() {
	ev.ending.Store(true)
	ev.in.schedule()
	ev.out.schedule()
}
