package localproc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"slices"
	"strconv"
	"syscall"
)

// Running as another OS user. postgres, initdb and pgbouncer all refuse to
// run as root, so when this process is root (a container, a CI job) they
// run as an unprivileged OS user instead, and the files written for them
// are given to that user. Not being root, they run as ourselves.

// runAs is the OS identity a managed child runs as; nil means our own.
type runAs struct {
	name     string
	uid, gid uint32
	groups   []uint32
}

// lookupRunAs returns the identity to run program as: nil unless we are
// root. name is the OS user, configType the config struct whose OSUser
// field chose it, for the error. Errors carry no package prefix: callers
// add their own.
func lookupRunAs(name, program, configType string) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, so %s must run as OS user %q, but looking it up failed: %w "+
			"(create it with `useradd --system --user-group --no-create-home %s`, or set %s.OSUser)", program, name, err, name, configType)
	}
	ra := &runAs{name: name}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("OS user %q: %w", name, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("OS user %q is root; %s refuses to run as root", name, program)
	}
	ra.uid, ra.gid = uint32(uid), uint32(gid)
	gids, _ := u.GroupIds() // supplementary groups are a nicety: ignore lookup errors
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			ra.groups = append(ra.groups, uint32(n))
		}
	}
	return ra, nil
}

// sysProcAttr starts a child as ra in a process group of its own (so a
// terminal's Ctrl-C reaches only us, and we stop it), sending it deathSig
// when we die.
func (ra *runAs) sysProcAttr(deathSig syscall.Signal) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if ra != nil {
		attr.Credential = &syscall.Credential{Uid: ra.uid, Gid: ra.gid, Groups: ra.groups}
	}
	return attr
}

// chown gives path to ra; a no-op when not root.
func (ra *runAs) chown(path string) error {
	if ra == nil {
		return nil
	}
	if err := os.Chown(path, int(ra.uid), int(ra.gid)); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// writeFile writes a 0600 file owned by ra (by us when ra is nil), for a
// child's configuration or secrets. Errors carry no package prefix.
func (ra *runAs) writeFile(path string, data []byte) error {
	err := os.WriteFile(path, data, 0o600)
	if err == nil && ra != nil {
		err = os.Chown(path, int(ra.uid), int(ra.gid))
	}
	return err
}

// canTraverse reports whether ra may search (x) the directory fi. ACLs are
// not consulted, so this errs towards refusing.
func (ra *runAs) canTraverse(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // can't tell: let the child report it
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == ra.uid:
		return perm&0o100 != 0
	case st.Gid == ra.gid || slices.Contains(ra.groups, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}
