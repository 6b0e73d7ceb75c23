package localproc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadLockFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "postmaster.pid")
	const lock = "23763\n/tmp/x/pgdata\n1796415755\n17376\n\n127.0.0.1\n  9983906     32793\nready   \n"
	if err := os.WriteFile(path, []byte(lock), 0o600); err != nil {
		t.Fatal(err)
	}
	if pid, shmid, ok := readLockFile(path); !ok || pid != 23763 || shmid != 32793 {
		t.Errorf("readLockFile = %d, %d, %v; want 23763, 32793, true", pid, shmid, ok)
	}
	// Written before the segment exists: nothing to wait for.
	if err := os.WriteFile(path, []byte("23763\n/tmp/x/pgdata\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := readLockFile(path); ok {
		t.Error("readLockFile of a lock file without a segment: ok")
	}
	if _, _, ok := readLockFile(filepath.Join(dir, "missing")); ok {
		t.Error("readLockFile of a missing file: ok")
	}
}

func TestShmAttachedMissingSegment(t *testing.T) {
	if _, err := os.Stat("/proc/sysvipc/shm"); err != nil {
		t.Skip(err)
	}
	if n, err := shmAttached(-1); n != 0 || err != nil {
		t.Errorf("shmAttached(-1) = %d, %v; want 0, nil", n, err)
	}
}
