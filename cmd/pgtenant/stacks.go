package main

import (
	"os"
	"strings"
	"syscall"
)

// smallStacksDebug is the GODEBUG setting serve and dev run with. By default
// (since Go 1.19) new goroutines start with the average stack size the
// runtime saw at the last GC. The router's handshakes run deep (TLS, SCRAM)
// on short-lived goroutines, so every session's two relay goroutines started
// at 4-8 KiB although they need under 2 KiB; with many held, idle sessions
// that was the largest part of the router's memory (see
// proxy.BenchmarkIdleSession and BENCHMARKS.md). The setting is read once, at
// process start, and neither //go:debug nor go.mod accepts it, hence the
// re-exec.
const smallStacksDebug = "adaptivestackstart=0"

// reexecWithSmallStacks replaces the process with itself, same arguments,
// with smallStacksDebug added to GODEBUG, when smallStacksEnv says so. It
// returns only if it does not or exec fails: the router works either way.
func reexecWithSmallStacks() {
	env, ok := smallStacksEnv(os.Args[1:], os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, os.Args, env) // returns only on failure
}

// smallStacksEnv returns the environment to re-exec with, and whether to:
// only for the subcommands that hold sessions, and only if GODEBUG says
// nothing about adaptivestackstart yet (an operator's choice wins, and the
// re-exec'd process stops there).
func smallStacksEnv(args, environ []string) ([]string, bool) {
	if len(args) == 0 || (args[0] != "serve" && args[0] != "dev") {
		return nil, false
	}
	var godebug string
	var seen bool
	env := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if !seen {
				godebug, seen = v, true // the first of duplicates is the one in effect
			}
			continue
		}
		env = append(env, kv)
	}
	if strings.Contains(godebug, "adaptivestackstart=") {
		return nil, false
	}
	if godebug != "" {
		godebug += ","
	}
	return append(env, "GODEBUG="+godebug+smallStacksDebug), true
}
