//go:build linux

package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The event relay: a plaintext session that Serve started relays without a
// goroutine of its own while it is idle. Each direction (client → upstream,
// upstream → client) runs on a goroutine only while its source socket is in
// use: started by data, it relays as the goroutine relay does (a read that
// waits in the runtime's poller, an ordinary Write) and stays for as long as
// data keeps coming, checked every hotFor; after a hotFor without any it
// parks: its goroutine returns and the socket is armed, once (EPOLLONESHOT,
// level-triggered), in the Serve's epoll set, whose one goroutine starts the
// direction again when data comes. So a busy session costs what the
// goroutine relay costs (no epoll wake, no goroutine start per message: the
// first version parked after every read and lost a quarter of the steady
// throughput), and an idle one costs no goroutine. The last direction to
// end runs the session's end (ended) as a continuation. BENCHMARKS.md §11
// has what this saves.

// hotFor is how long a direction waits for data in its goroutine before it
// parks. Longer keeps bursty sessions on the fast path; shorter gives idle
// sessions' stacks back sooner.
const hotFor = time.Second

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
			// gen under mu: a session going cold or warm registers anew.
			ok := d != nil && d.gen == uint32(ev.Pad) // else: a socket since closed, its fd maybe reused
			p.mu.RUnlock()
			if ok {
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
	ev    *evRelay
	fd    int32  // src's, for the poller's table
	gen   uint32 // this registration's generation
	state atomic.Int32
	// rawFD is src's descriptor while the session is cold (evcold_linux.go):
	// src itself closed, r empty.
	rawFD int32
	// err is why d ended (read by the session's end), or, set before d
	// ever ran, why it could not be registered.
	err error

	// r reads src, d's socket (r.conn; the other direction's is where d
	// writes); it holds a buffer only while relaying one.
	r lazyReader
}

// toClient reports whether d is the upstream → client direction.
func (d *pumpDir) toClient() bool { return d == &d.ev.out }

// src is the socket d reads.
func (d *pumpDir) src() net.Conn { return d.r.conn }

// evRelay is the event-relayed part of a liveSession. Its zero value (p nil)
// means the session relays on goroutines (relay), as TLS sessions and those
// of ServeConn do.
type evRelay struct {
	p       *poller
	ls      *liveSession
	in, out pumpDir       // client → upstream, upstream → client
	pc      *pooledClient // set for a pooled session: in reads its client, out is unused
	f       framer        // of out: to stop at a message boundary when killed
	left    atomic.Int32  // directions not yet ended
	ending  atomic.Bool   // the session is ending: every direction stops
	// cold: both directions wait on bare descriptors (evcold_linux.go);
	// set and cleared under mu, which orders going cold and warming up.
	cold atomic.Bool
	mu   sync.Mutex

	// What end needs of serveConn, which returned long before (the rest
	// is the same for all of a Serve's sessions: poller.srv, poller.ctx,
	// and the Serve's wait group, srv.conns: a session accepted during the
	// drain is refused before it could be relayed).
	begin stamp
	id    uint64
}

// canEventRelay reports whether a session on conns can be event-relayed:
// all plain TCP (a TLS connection buffers what it decrypted, which epoll
// cannot see).
func canEventRelay(p *poller, conns ...net.Conn) bool {
	if p == nil {
		return false
	}
	for _, c := range conns {
		if _, ok := c.(*net.TCPConn); !ok {
			return false
		}
	}
	return true
}

// init prepares ev to relay client and upstream on p (before the session
// is visible to kill: see start).
func (ev *evRelay) init(p *poller, ls *liveSession, client, upstream net.Conn) {
	ev.p, ev.ls = p, ls
	ev.in.setup(ev, client)
	ev.out.setup(ev, upstream)
	ev.left.Store(2)
}

// initPooled prepares ev to read a pooled client's messages on p (its
// server connections' replies are pumped as ever: pooled.go); only in runs.
func (ev *evRelay) initPooled(p *poller, ls *liveSession, pc *pooledClient) {
	ev.p, ev.ls, ev.pc = p, ls, pc
	ev.in.setup(ev, pc.client)
	ev.left.Store(1)
}

// dirs are the directions ev runs.
func (ev *evRelay) dirs() []*pumpDir {
	if ev.pc != nil {
		return []*pumpDir{&ev.in}
	}
	return []*pumpDir{&ev.in, &ev.out}
}

func (d *pumpDir) setup(ev *evRelay, src net.Conn) {
	d.ev = ev
	d.r.conn, d.rawFD = src, -1
	d.state.Store(dirRunning) // the starter's until it registers it
	raw, err := src.(*net.TCPConn).SyscallConn()
	if err != nil {
		d.err = err
		return
	}
	d.r.raw = raw
	d.r.fn = d.r.readFD // a method value made once: no allocation per read
}

// dst is where d writes: the other direction's source.
func (d *pumpDir) dst() net.Conn {
	if d.toClient() {
		return d.ev.in.src()
	}
	return d.ev.out.src()
}

// start hands the session to the poller: from now on end runs exactly
// once, when both directions have ended, on the goroutine of the last one;
// it does what serveConn does after relay. Both directions start parked
// (the client was just greeted: nothing is on its way yet). The session
// must end at once if ctx ended already (Serve's hook may have missed it).
func (ev *evRelay) start(begin time.Time, id uint64) {
	ev.begin, ev.id = stampOf(begin), id
	ev.p.runs.Add(1) // this goroutine arms the set below
	defer ev.p.runs.Done()
	// Once armed, a direction may run (and write its fields) at once: what
	// failed is noted here, not read back from it.
	var failed []*pumpDir
	for _, d := range ev.dirs() {
		err := d.err
		if err == nil {
			if cerr := d.r.raw.Control(func(fd uintptr) { err = d.registerFD(fd) }); cerr != nil {
				err = cerr
			}
		}
		if err != nil { // not armed: still ours
			d.err = err
			failed = append(failed, d)
		}
	}
	if ev.p.ctx.Err() != nil {
		ev.abort()
	}
	if ev.ls.killed.Load() != nil { // killed before it was armed
		if ev.pc != nil {
			ev.pc.wake()
		} else {
			ev.wakeOut()
		}
	}
	for _, d := range failed {
		d.state.Store(dirParked)
		d.schedule() // runs, fails and ends the session
	}
	if ev.pc == nil && len(failed) == 0 {
		time.AfterFunc(hotFor, ev.tryCool) // an idle session goes cold (evcold_linux.go)
	}
}

func (d *pumpDir) p() *poller { return d.ev.p }

// armEvents is what a parked direction waits for: once (the poller's event
// disarms it, so a running direction costs the poller nothing), and level-
// triggered (arming reports data that came before).
const armEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// registerFD enters d in the poller's table and arms fd, its socket,
// with d parked.
func (d *pumpDir) registerFD(fd uintptr) error { return d.register(fd, true) }

// registerDisarmed enters d in the poller's table and fd in the epoll set,
// disarmed, for a d that runs: it arms it when it parks.
func (d *pumpDir) registerDisarmed(fd uintptr) error { return d.register(fd, false) }

func (d *pumpDir) register(fd uintptr, armed bool) error {
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
	e := unix.EpollEvent{Events: unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(d.gen)}
	if armed {
		e.Events = armEvents
		d.state.Store(dirParked) // before arming: the event may come at once
	}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &e); err != nil {
		d.state.Store(dirRunning)
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
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
	epfd := d.p().epfd
	switch {
	case d.r.raw != nil:
		_ = d.r.raw.Control(func(fd uintptr) { _ = unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	case d.rawFD >= 0: // cold
		_ = unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(d.rawFD), nil)
	}
}

// schedule starts d on a goroutine if it is parked. A running d sees what
// its waker wants through the read deadline the waker set (kill, abort)
// or the data it reads.
func (d *pumpDir) schedule() {
	if d.state.CompareAndSwap(dirParked, dirRunning) {
		d.p().runs.Add(1)
		go d.run()
	}
}

// park hands d to the poller and reports true, or reports false when d
// must go on running (on its caller's goroutine) instead: its socket could
// not be armed, or the session is ending or was killed and nobody else took
// d meanwhile.
func (d *pumpDir) park() bool {
	d.state.Store(dirParked)
	// After the store: an event of the arming below sees parked. The
	// flags are set before their setters call schedule, which sees parked
	// too, or are seen here.
	var aerr error
	cerr := d.r.raw.Control(func(fd uintptr) {
		e := unix.EpollEvent{Events: armEvents, Fd: int32(fd), Pad: int32(d.gen)}
		aerr = unix.EpollCtl(d.p().epfd, unix.EPOLL_CTL_MOD, int(fd), &e)
	})
	if cerr != nil || aerr != nil || d.woken() {
		return !d.state.CompareAndSwap(dirParked, dirRunning)
	}
	return true
}

// woken reports whether someone wants d to stop waiting for data: the
// session is ending, or was killed (toward the client, or a pooled
// client's reader), or a pooled client's server pump ended it.
func (d *pumpDir) woken() bool {
	ev := d.ev
	if ev.ending.Load() {
		return true
	}
	if pc := ev.pc; pc != nil {
		return ev.ls.killed.Load() != nil || pc.stopRead.Load()
	}
	return d.toClient() && ev.ls.killed.Load() != nil
}

// stopping reports why d must stop reading now, if it must: the session
// is ending (nil error, ok) or, toward the client, was killed.
func (d *pumpDir) stopping() (stop bool, err error) {
	switch {
	case d.ev.ending.Load():
		return true, nil
	case d.toClient() && d.ev.ls.killed.Load() != nil:
		return true, d.killAtBoundary()
	}
	return false, nil
}

// run relays while src keeps having data, then parks d (or ends it).
func (d *pumpDir) run() {
	defer d.p().runs.Done()
	if d.ev.pc != nil {
		d.runPooled()
		return
	}
	if d.err != nil { // could not be registered
		d.finish(d.err)
		return
	}
	if d.ev.cold.Load() {
		if err := d.ev.warm(d); err != nil {
			d.finish(err)
			return
		}
	}
	if d.src() == nil { // the other direction's warm-up failed for it
		d.finish(nil)
		return
	}
	ls := d.ev.ls
	// A fresh deadline: the last one passed (that parked d) or was set by a
	// waker, whose flag the loop checks first.
	_ = d.src().SetReadDeadline(time.Now().Add(hotFor))
	active := false // d relayed something since its read deadline was last set
	for {
		if stop, err := d.stopping(); stop {
			d.finish(err)
			return
		}
		b, rerr := d.r.read()
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			if stop, err := d.stopping(); stop {
				d.finish(err)
				return
			}
			if active { // busy: wait on in the goroutine
				active = false
				_ = d.src().SetReadDeadline(time.Now().Add(hotFor))
				continue // the loop's check sees a waker that came before this deadline
			}
			if d.parkOrCool() {
				return
			}
			if d.ev.cold.Load() { // went cold, but was woken meanwhile
				if err := d.ev.warm(d); err != nil {
					d.finish(err)
					return
				}
			}
			_ = d.src().SetReadDeadline(time.Now().Add(hotFor))
			continue
		}
		if len(b) > 0 {
			active = true
			if d.toClient() {
				f := &d.ev.f
				f.feed(b)
				if f.ready != 0 { // before the write: the client cannot have answered yet
					ls.noteReady(f.ready)
					f.ready = 0
				}
				nw, werr := d.dst().Write(b)
				d.r.done()
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
				d.r.done()
				if werr != nil {
					ls.bytesIn.Add(int64(nw - len(b)))
					d.finish(werr)
					return
				}
			}
		}
		if rerr != nil {
			switch {
			case d.ev.ending.Load():
				rerr = nil // the other direction closed src: its error is the session's
			case d.toClient() && ls.killed.Load() != nil:
				rerr = errKilled // could not reach a boundary: just close
			}
			d.finish(rerr)
			return
		}
		if d.toClient() && ls.killed.Load() != nil && d.ev.f.atBoundary() {
			d.finish(d.killAtBoundary())
			return
		}
	}
}

// runPooled is run for a pooled client: it forwards the client's messages
// (pooled.go) while they keep coming, then parks; whatever ends the
// session makes the read fail (a close) or time out with a flag set (a
// kill, the server pump's end, a hard stop: woken).
func (d *pumpDir) runPooled() {
	if d.err != nil { // could not be registered
		d.endPooled(d.err)
		return
	}
	pc, ls := d.ev.pc, d.ev.ls
	_ = d.src().SetReadDeadline(time.Now().Add(hotFor))
	active := false // d relayed something since its read deadline was last set
	for {
		b, rerr := d.r.read()
		if len(b) > 0 {
			active = true
			ls.bytesIn.Add(int64(len(b)))
			err := pc.forward(d.p().ctx, b)
			d.r.done()
			if err != nil {
				d.endPooled(err)
				return
			}
		}
		if rerr == nil {
			continue
		}
		if !errors.Is(rerr, os.ErrDeadlineExceeded) || d.woken() {
			d.endPooled(rerr)
			return
		}
		// Our own deadline: wait on, or park.
		if !active && d.park() {
			return
		}
		active = false
		_ = d.src().SetReadDeadline(time.Now().Add(hotFor))
		if d.woken() { // its waker's deadline came before ours
			d.endPooled(rerr)
			return
		}
	}
}

// endPooled ends a pooled session as ServeConn does after pooledClient.run.
func (d *pumpDir) endPooled(cause error) {
	pc := d.ev.pc
	err := pc.finish(cause)
	d.r.done()
	d.state.Store(dirEnded)
	d.unregister()
	_ = pc.client.Close()
	d.ev.end(err)
}

// killAtBoundary ends a killed session's upstream → client direction: at a
// message boundary it tells the client why; mid-message it lets the
// upstream finish the message first, for at most a second, reading as the
// goroutine relay does (a kill is rare; this goroutine may block).
func (d *pumpDir) killAtBoundary() error {
	ls, f := d.ev.ls, &d.ev.f
	if !f.atBoundary() {
		_ = d.src().SetReadDeadline(time.Now().Add(time.Second))
		r := lazyReader{conn: d.src()}
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
	d.r.done()
	d.err = err
	d.state.Store(dirEnded)
	ev.ending.Store(true)
	client, upstream := ev.in.src(), ev.out.src() // nil after a failed warm-up
	if tc, ok := client.(*net.TCPConn); ok && d.toClient() && err == errKilled {
		// Our ErrorResponse is on its way: half-close, not a reset.
		_ = tc.CloseWrite()
	} else {
		closeConn(client)
	}
	closeConn(upstream)
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
		closeConn(client)
		ev.end(ev.result())
	}
}

// end is what serveConn does after relay: release, count and log the
// session, and tell Serve it is over.
func (ev *evRelay) end(err error) {
	ls, s := ev.ls, ev.p.srv
	ls.killedBy = ls.killed.Load() // why the router ended it, if it did (metrics)
	// The session's logger is made again rather than held while it idles.
	_ = s.ended(ev.p.ctx, ls.session, s.log.With("conn", ev.id, "remote", ls.remote), ev.begin.time(), err)
	s.conns.Done()
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

// wakeOut makes the upstream → client direction see a kill: it interrupts
// its read if it runs, and starts it if it is parked.
func (ev *evRelay) wakeOut() {
	if ev.pc != nil { // a pooled session: the pump or the reader, whichever waits
		ev.pc.wake()
		return
	}
	ev.interrupt(&ev.out)
	ev.out.schedule()
}

// interrupt makes d's read return now if d runs (a cold d has no socket to
// interrupt: its goroutine, when scheduled, warms the session first).
func (ev *evRelay) interrupt(d *pumpDir) {
	ev.mu.Lock()
	if c := d.src(); c != nil && !ev.cold.Load() {
		_ = c.SetReadDeadline(time.Now())
	}
	ev.mu.Unlock()
}

// closeUpstream closes the upstream connection the session has now, if
// any (one of its ends: the relay closed it already unless the handshake
// failed before the relay started).
func (ev *evRelay) closeUpstream() {
	ev.mu.Lock()
	c := ev.out.src()
	ev.mu.Unlock()
	closeConn(c)
}

// wakeIn starts a parked pooled client's reader, to see that its session
// must end (its waker set a deadline or closed the client).
func (ev *evRelay) wakeIn() {
	if ev.p != nil {
		ev.in.schedule()
	}
}

// abort ends the session at once (Serve's hard stop).
func (ev *evRelay) abort() {
	ev.ending.Store(true)
	if ev.pc != nil { // as the goroutine path, whose hook closes the client
		_ = ev.pc.client.Close()
		ev.in.schedule()
		return
	}
	for _, d := range ev.dirs() {
		ev.interrupt(d)
		d.schedule()
	}
}
