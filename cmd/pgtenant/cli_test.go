package main

import (
	"context"
	"errors"
	"net"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/catalog"
)

// Every command answers --help, and `help <cmd>`, with its own usage and
// nothing else: no key from genkey, no version from version.
func TestCommandHelp(t *testing.T) {
	for name := range commands {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr syncBuf
			err := run(context.Background(), []string{name, "--help"}, &stdout, &stderr)
			if !errors.Is(err, pflag.ErrHelp) || exitCode(err) != 0 {
				t.Fatalf("%s --help = %v", name, err)
			}
			want := "Usage: pgtenant " + name
			if !strings.Contains(stderr.String(), want) || stdout.String() != "" {
				t.Fatalf("%s --help: stdout %q, stderr:\n%s", name, stdout.String(), stderr.String())
			}

			var out, errOut syncBuf
			err = run(context.Background(), []string{"help", name}, &out, &errOut)
			if exitCode(err) != 0 {
				t.Fatalf("help %s = %v", name, err)
			}
			if out.String() != stderr.String() || errOut.String() != "" {
				t.Fatalf("help %s printed %q (stderr %q), want %s --help's text on stdout", name, out.String(), errOut.String(), name)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"help", "help"}} {
		var stdout syncBuf
		if err := run(context.Background(), args, &stdout, &syncBuf{}); err != nil || !strings.Contains(stdout.String(), "pgtenant help [command]") {
			t.Errorf("%q: %v\n%s", args, err, stdout.String())
		}
	}
	err := run(context.Background(), []string{"help", "nope"}, &syncBuf{}, &syncBuf{})
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("help nope = %v", err)
	}
}

// tenants --help lists the flags as well as the verbs, for every verb.
func TestTenantsHelpListsFlags(t *testing.T) {
	for _, args := range [][]string{{"tenants", "--help"}, {"tenants", "help"}, {"tenants", "list", "--help"}, {"tenants", "delete", "-h"}} {
		var stderr syncBuf
		if err := run(context.Background(), args, &syncBuf{}, &stderr); !errors.Is(err, pflag.ErrHelp) {
			t.Fatalf("%q = %v", args, err)
		}
		for _, flag := range []string{"--config", "--after", "--limit", "--yes", "--admin", "--token", "warm TENANT"} {
			if !strings.Contains(stderr.String(), flag) {
				t.Errorf("%q does not list %s:\n%s", args, flag, stderr.String())
			}
		}
	}
}

func TestGenkey(t *testing.T) {
	var stdout syncBuf
	if err := run(context.Background(), []string{"genkey"}, &stdout, &syncBuf{}); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.ParseKey(strings.TrimSpace(stdout.String())); err != nil {
		t.Fatalf("genkey printed %q: %v", stdout.String(), err)
	}
	if err := run(context.Background(), []string{"genkey", "extra"}, &syncBuf{}, &syncBuf{}); !errors.Is(err, errUsage) {
		t.Fatalf("genkey extra = %v", err)
	}
}

func TestVersion(t *testing.T) {
	bi, _ := debug.ReadBuildInfo()
	want := "pgtenant " + buildVersion(bi, version) + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var stdout syncBuf
		if err := run(context.Background(), args, &stdout, &syncBuf{}); err != nil || stdout.String() != want {
			t.Errorf("%q: %q, %v; want %q", args, stdout.String(), err, want)
		}
	}
}

func TestBuildVersion(t *testing.T) {
	const rev = "ace3c8bb86b12799933e30bec99c2de19fbb0296"
	info := func(v string, settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/pgtenant/pgtenant", Version: v}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	for _, c := range []struct {
		bi   *debug.BuildInfo
		want string
	}{
		{nil, "v9-ldflags"},
		{info("(devel)"), "v9-ldflags"},
		{info(""), "v9-ldflags"},
		{info("v1.2.3"), "v1.2.3"},
		{info("v1.2.3", "vcs.revision", rev, "vcs.modified", "false"), "v1.2.3 (commit ace3c8bb86b1)"},
		{info("v0.0.0-20261204201824-ace3c8bb86b1+dirty", "vcs.revision", rev, "vcs.modified", "true"),
			"v0.0.0-20261204201824-ace3c8bb86b1+dirty (commit ace3c8bb86b1-dirty)"},
		{info("(devel)", "vcs.revision", "abc"), "v9-ldflags (commit abc)"},
	} {
		if got := buildVersion(c.bi, "v9-ldflags"); got != c.want {
			t.Errorf("buildVersion(%+v) = %q, want %q", c.bi, got, c.want)
		}
	}
}

// A taken dev port fails before Postgres starts, saying how to pick
// another in the form the user ran dev in.
func TestDevListenTaken(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())
	for _, c := range []struct{ makelevel, want string }{
		{"", "pick another address: --listen 127.0.0.1:"},
		{"1", `pick another address: make dev ARGS="--listen 127.0.0.1:`},
	} {
		t.Setenv("MAKELEVEL", c.makelevel)
		err := run(context.Background(), []string{"dev", "--data-dir", t.TempDir(), "--listen", busy.Addr().String()}, &syncBuf{}, &syncBuf{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), busy.Addr().String()) {
			t.Errorf("MAKELEVEL=%q: %v; want %q", c.makelevel, err, c.want)
		}
	}
	if got := devListenHint("127.0.0.1:6432", true); got != `make dev ARGS="--listen 127.0.0.1:6433"` {
		t.Errorf("hint %q", got)
	}
	if got := devListenHint("[::1]:"+port, false); !strings.HasPrefix(got, "--listen [::1]:") {
		t.Errorf("hint %q", got)
	}
	if got := devListenHint("nonsense", false); got != "--listen 127.0.0.1:6433" {
		t.Errorf("hint %q", got)
	}
}
