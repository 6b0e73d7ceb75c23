//go:build unix

package bench

import "syscall"

// RaiseFileLimit raises this process's soft limit on open files
// (RLIMIT_NOFILE) to its hard limit, since every connection is a file
// descriptor, and returns the limits before and after. Go already does
// this at start-up on most systems (and FileLimit.Before then equals
// Soft); the call makes sure, and tells what the limit is. When the OS
// refuses, the error comes with the unchanged limits.
func RaiseFileLimit() (FileLimit, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return FileLimit{}, err
	}
	fl := FileLimit{Before: uint64(rl.Cur), Soft: uint64(rl.Cur), Hard: uint64(rl.Max)} // int64 on some systems
	if rl.Cur >= rl.Max {
		return fl, nil
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fl, err
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fl, err
	}
	fl.Soft, fl.Hard = uint64(rl.Cur), uint64(rl.Max)
	return fl, nil
}
