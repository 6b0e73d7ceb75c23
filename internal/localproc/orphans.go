package localproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A postmaster that died without shutting down (SIGKILL, OOM killer) leaves
// its children behind. Postgres makes every child a session leader of its
// own (setsid in InitPostmasterChild), so a signal to the postmaster's
// process group does not reach them, and they exit only when they notice
// the postmaster is gone, an idle one at once, a busy one at its next wait.
// Until the last has, the System V shared memory segment that
// postmaster.pid names is still attached, and a new postmaster on the same
// data directory refuses to start ("pre-existing shared memory block ...
// is still in use"). So every start first waits for them.

// orphanWait bounds how long a start waits for a dead postmaster's
// children; after it, postgres is started anyway and says what is wrong.
const orphanWait = 30 * time.Second

// waitOrphans returns once no process of a dead postmaster of pgdata is
// attached to its shared memory any more. It returns at once when there is
// no postmaster.pid (a clean shutdown removes it), when its postmaster is
// alive (postgres then reports ErrInUse), or when the segment is gone or
// unattached; it fails only when ctx ends first.
func waitOrphans(ctx context.Context, pgdata string, log *slog.Logger) error {
	pid, shmid, ok := readLockFile(filepath.Join(pgdata, "postmaster.pid"))
	if !ok || processAlive(pid) {
		return nil
	}
	t0 := time.Now()
	deadline := time.NewTimer(orphanWait)
	defer deadline.Stop()
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	logged := false
	for {
		n, err := shmAttached(shmid)
		if err != nil || n == 0 {
			if logged {
				log.Info("the dead postmaster's processes are gone", "pgdata", pgdata, "took", time.Since(t0))
			}
			return nil // can't tell, or free: postgres has the last word
		}
		if !logged {
			logged = true
			log.Info("waiting for the processes of a dead postmaster to exit", "pgdata", pgdata, "pid", pid, "shmid", shmid, "attached", n)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("local: waiting for the %d processes of dead postmaster %d to exit (shared memory id %d): %w", n, pid, shmid, ctx.Err())
		case <-deadline.C:
			log.Warn("processes of a dead postmaster are still running; starting postgres anyway", "pgdata", pgdata, "pid", pid, "shmid", shmid, "attached", n)
			return nil
		case <-tick.C:
		}
	}
}

// readLockFile returns the postmaster's pid (line 1) and its shared memory
// segment's id (line 7: "key id") from postmaster.pid.
func readLockFile(path string) (pid, shmid int, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return 0, 0, false // written before the segment existed
	}
	pid, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	f := strings.Fields(lines[6])
	if err1 != nil || len(f) != 2 {
		return 0, 0, false
	}
	shmid, err = strconv.Atoi(f[1])
	return pid, shmid, err == nil && pid > 0
}

// processAlive reports whether pid exists (EPERM: it does, as another user).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// shmAttached returns how many processes are attached to the System V
// shared memory segment shmid, 0 if it no longer exists, from
// /proc/sysvipc/shm (a header line naming the columns, then one line per
// segment).
func shmAttached(shmid int) (int, error) {
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	if !sc.Scan() {
		return 0, errors.New("/proc/sysvipc/shm: no header")
	}
	idCol, nCol := -1, -1
	for i, name := range strings.Fields(sc.Text()) {
		switch name {
		case "shmid":
			idCol = i
		case "nattch":
			nCol = i
		}
	}
	if idCol < 0 || nCol < 0 {
		return 0, errors.New("/proc/sysvipc/shm: no shmid or nattch column")
	}
	want := strconv.Itoa(shmid)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > max(idCol, nCol) && f[idCol] == want {
			return strconv.Atoi(f[nCol])
		}
	}
	return 0, sc.Err()
}
