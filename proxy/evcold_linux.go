//go:build linux

package proxy

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Cold sessions. A parked session still holds its two sockets as Go
// connections: each a net.netFD with its four addresses and a runtime
// pollDesc (outside the Go heap, never freed), about 1 KB a session
// (BENCHMARKS.md §11). So once both directions of an unpooled session have
// parked, the session goes cold: each socket's descriptor is duplicated,
// the connection closed, and the bare descriptor armed in the epoll set.
// The first event on either warms the whole session up again (net.FileConn
// for both) before its direction runs. Going cold and warming up cost a
// few system calls each, paid only by sessions idle for hotFor; a session
// goes cold only while nothing runs for it, so no relay code sees it cold.
// (A pooled client keeps its one connection: pooled.go reads it from many
// places.)

// closeConn closes c unless it is nil (a direction whose warm-up failed).
func closeConn(c net.Conn) {
	if c != nil {
		_ = c.Close()
	}
}

// other is the session's other direction.
func (d *pumpDir) other() *pumpDir {
	if d == &d.ev.in {
		return &d.ev.out
	}
	return &d.ev.in
}

// parkOrCool parks d, and the session goes cold if the other direction is
// parked too. Like park, it reports false when d must go on running (on
// its caller's goroutine); then the session may be cold (see run).
func (d *pumpDir) parkOrCool() bool {
	ev, o := d.ev, d.other()
	if ev.pc != nil || o.state.Load() != dirParked || d.woken() || !o.state.CompareAndSwap(dirParked, dirRunning) {
		return d.park()
	}
	// Both directions are ours now: an event for o meanwhile finds it
	// running and is dropped, and the bare descriptor armed below reports
	// its data again (level-triggered).
	ev.mu.Lock()
	err := ev.cool()
	ev.mu.Unlock()
	if err != nil {
		// Still warm (cool undoes nothing it did not finish: see there):
		// o parks as it was, d goes on.
		if !o.park() {
			o.p().runs.Add(1)
			go o.run()
		}
		return false
	}
	// A waker that came while both were ours found them running: wake
	// them now (each warms the session up).
	if d.woken() || o.woken() {
		d.schedule()
		o.schedule()
	}
	return true
}

// tryCool makes a session that has not run since it started cold (run
// cools the others, see parkOrCool): start has it called hotFor after. It
// does nothing to a session whose directions are not both parked.
func (ev *evRelay) tryCool() {
	if ev.cold.Load() || ev.ending.Load() {
		return
	}
	in, out := &ev.in, &ev.out
	if !in.state.CompareAndSwap(dirParked, dirRunning) {
		return
	}
	if !out.state.CompareAndSwap(dirParked, dirRunning) {
		// out runs: in parks again (an event dropped meanwhile is
		// reported again when park arms it).
		if !in.park() {
			in.p().runs.Add(1)
			go in.run()
		}
		return
	}
	ev.mu.Lock()
	err := ev.cool()
	ev.mu.Unlock()
	if err != nil {
		for _, d := range []*pumpDir{in, out} {
			if !d.park() {
				d.p().runs.Add(1)
				go d.run()
			}
		}
		return
	}
	if in.woken() || out.woken() {
		in.schedule()
		out.schedule()
	}
}

// cool makes the session cold: both directions must be the caller's. It
// leaves both parked on their bare descriptors. Under ev.mu. On an error
// the session is as it was (the connections untouched), both still the
// caller's.
func (ev *evRelay) cool() error {
	var fds [2]int
	ds := [2]*pumpDir{&ev.in, &ev.out}
	for i, d := range ds {
		var derr error
		if err := d.r.raw.Control(func(fd uintptr) {
			fds[i], derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		}); err != nil {
			derr = err
		}
		if derr != nil {
			for _, fd := range fds[:i] {
				_ = unix.Close(fd)
			}
			return os.NewSyscallError("fcntl", derr)
		}
	}
	ev.cold.Store(true)
	ev.p.srv.cfg.Metrics.cold(1)
	for i, d := range ds {
		d.unregister() // the connection's descriptor leaves the set before it closes
		_ = d.r.conn.Close()
		d.r = lazyReader{}
		d.rawFD = int32(fds[i])
		if err := d.registerFD(uintptr(fds[i])); err != nil {
			// Unreachable but for a broken epoll set: no event will
			// start d, so start it now; it warms up (and fails there
			// too, ending the session).
			d.state.Store(dirParked)
			d.schedule()
		}
	}
	return nil
}

// warm makes a cold session warm again, for d, whose goroutine runs (the
// other direction's may too, waiting for mu to do the same). On an error
// the session ends: a direction that could not be warmed has no
// connection (src nil).
func (ev *evRelay) warm(d *pumpDir) error {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if !ev.cold.Load() {
		return nil
	}
	o := d.other()
	claimed := o.state.CompareAndSwap(dirParked, dirRunning)
	var first error
	for _, x := range [2]*pumpDir{d, o} {
		x.unregister()
		fd := int(x.rawFD)
		x.rawFD = -1
		c, err := fileConn(fd)
		if err == nil {
			x.setConn(c)
			// Registered disarmed: park arms it (EPOLL_CTL_MOD).
			err = x.r.raw.Control(func(fd uintptr) { err = x.registerDisarmed(fd) })
		}
		if err != nil && first == nil {
			first = err
		}
	}
	ev.cold.Store(false)
	ev.p.srv.cfg.Metrics.cold(-1)
	if first != nil {
		ev.ending.Store(true)
	}
	if claimed {
		// o was parked: park it again (it is armed only now), or, if
		// it must run (the session ends), run it.
		if first != nil || !o.park() {
			o.p().runs.Add(1)
			go o.run()
		}
	}
	return first
}

// fileConn makes a connection of fd, which it closes (net.FileConn works
// on a duplicate).
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	return net.FileConn(f)
}

// setConn makes c, a *net.TCPConn, what d reads.
func (d *pumpDir) setConn(c net.Conn) {
	d.r = lazyReader{conn: c}
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			d.r.raw = raw
			d.r.fn = d.r.readFD
		}
	}
}
