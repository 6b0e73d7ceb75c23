// Command pgtenant is a tenant-aware PostgreSQL connection router: clients
// connect with one DSN and name their tenant in the user name; pgtenant
// authenticates them, creates the tenant's database on first connect and
// relays the session to it.
//
// Subcommands:
//
//	pgtenant dev     run a local Postgres and the router on it (for trying it out)
//	pgtenant serve   run the router against an existing Postgres server (--config)
//	pgtenant bench   measure a router (or any Postgres target) under connection fan-out
//	pgtenant tenants list, show or delete tenants (catalog and provider)
//	pgtenant migrate migrate the tenant databases' schema (status, up)
//	pgtenant pools   show a running router's connection pools (admin API)
//	pgtenant genkey  print a new catalog encryption key
//	pgtenant version print the version and the commit it was built from
//	pgtenant help    print the usage, or a command's help (help dev)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	reexecWithSmallStacks() // stacks.go
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "pgtenant:", err)
	}
	stop()
	os.Exit(exitCode(err))
}

// exitCode is 0 for success and --help, 2 for usage errors, 1 otherwise.
func exitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return 0
	case errors.Is(err, errUsage), errors.Is(err, errConfig):
		return 2
	}
	return 1
}

var errUsage = errors.New("usage")

const usage = `pgtenant: a tenant-aware PostgreSQL connection router

Usage:
  pgtenant dev    [flags]   run a local Postgres and the router on it (try it out)
  pgtenant serve  [flags]   run the router against an existing Postgres (--config FILE)
  pgtenant bench  [flags]   measure a router under fan-out (--dsn DSN [--compare DSN])
  pgtenant tenants <list|show|delete> [flags]   inspect or delete tenants (catalog + provider)
  pgtenant tenants <verb> --admin URL            the same plus warm, evict, block, unblock, through a router's admin API
  pgtenant migrate <status|up> [flags]           tenants per schema version; migrate template and tenants (--dir DIR)
  pgtenant pools --admin URL                     a router's connection pools and upstream budgets (like SHOW POOLS)
  pgtenant genkey           print a new catalog encryption key (for PGTENANT_CATALOG_KEY)
  pgtenant version          print the version and the commit it was built from
  pgtenant help [command]   print this, or a command's help

Run 'pgtenant <command> --help' or 'pgtenant help <command>' for the flags of a command.
`

// commands are the subcommands, by name.
var commands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"dev":     runDev,
	"serve":   runServe,
	"bench":   runBench,
	"tenants": runTenants,
	"migrate": runMigrate,
	"pools":   runPools,
	"genkey":  runGenkey,
	"version": runVersion,
}

// run is main without the process: tests call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(ctx, args[1:], stdout, stderr)
	}
	switch args[0] {
	case "--version":
		return runVersion(ctx, nil, stdout, stderr)
	case "help", "-h", "--help":
		if len(args) < 2 || args[1] == "help" {
			fmt.Fprint(stdout, usage)
			return nil
		}
		cmd, ok := commands[args[1]]
		if !ok {
			fmt.Fprint(stderr, usage)
			return fmt.Errorf("%w: unknown command %q", errUsage, args[1])
		}
		// Asked for, so to stdout (`pgtenant help dev | less`); --help
		// returns pflag.ErrHelp, which exits 0.
		return cmd(ctx, []string{"--help"}, stdout, stdout)
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}
