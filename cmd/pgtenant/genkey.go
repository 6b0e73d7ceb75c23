package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/router"
)

// runGenkey prints a new catalog key. It takes no flags but --help, which
// must print help rather than a key someone might mistake for output.
func runGenkey(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant genkey", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: pgtenant genkey

Prints a new random catalog encryption key (32 bytes, standard base64)
for %s or catalog.key. The key encrypts the tenants'
upstream passwords in the catalog: every router sharing a catalog needs
the same key, and a lost key orphans those passwords. ('pgtenant dev'
makes its own, in <data-dir>/catalog.key.)
`, router.EnvCatalogKey)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("%w: genkey takes no arguments", errUsage)
	}
	fmt.Fprintln(stdout, catalog.NewKey())
	return nil
}
