package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/pflag"
)

// runVersion prints the version and the commit the binary was built from.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant version", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: pgtenant version

Prints the module version and the VCS commit the binary was built from (as
go version -m shows them; "-dirty" when the tree had uncommitted changes),
or the version set with -ldflags "-X main.version=..." when the build
recorded none.
`)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, "pgtenant", buildVersion(bi, version))
	return nil
}

// buildVersion is bi's module version, else fallback (the -ldflags value),
// followed by the VCS commit when the build recorded one. A build outside a
// VCS checkout, or with -buildvcs=false, records none; nor does `go run`
// or `go test`, whose module version is "(devel)".
func buildVersion(bi *debug.BuildInfo, fallback string) string {
	if bi == nil {
		return fallback
	}
	v := fallback
	if mv := bi.Main.Version; mv != "" && mv != "(devel)" {
		v = mv
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return v
	}
	if len(rev) > 12 {
		rev = rev[:12] // as Go's pseudo-versions shorten it
	}
	if dirty {
		rev += "-dirty"
	}
	return v + " (commit " + rev + ")"
}
