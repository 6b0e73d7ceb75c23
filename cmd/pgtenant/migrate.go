package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/migrate"
	"github.com/pgtenant/pgtenant/router"
)

const migrateUsage = `Usage: pgtenant migrate status [--config FILE] [--dir DIR]
       pgtenant migrate up [--config FILE] [--dir DIR] [--to N] [--concurrency K] [--canary N]
                           [--tenants a,b] [--max-fail-share F] [--dry-run]

  status   tenants per schema version, and which failed and why (from the catalog)
  up       migrate the template, then a canary wave, then the other tenants, K at a time

Migration files are DIR/NNNN_name.sql, applied in version order, each in a
transaction unless its first line is "-- pgtenant:no-transaction" (for
CREATE INDEX CONCURRENTLY). An edited file that was already registered is
refused. up is resumable: run it again after a failure or a crash and it
carries on; no migration is applied twice. It uses the configuration of
'pgtenant serve' (file and environment); the migrations keys give the
defaults of the flags.

Exit status: 0 every tenant is at the target version, 1 some failed, were
not reached or are behind (status), 2 usage or configuration error.
`

// errConfig marks a configuration error: exit status 2, like a usage error.
var errConfig = errors.New("configuration")

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant migrate", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "YAML config file, as for serve")
	dir := fs.String("dir", "", "directory of the migration files (default migrations.dir)")
	to := fs.Int64("to", 0, "up: migrate to this version (default: the last file's)")
	concurrency := fs.Int("concurrency", 0, "up: tenants migrated at once (default migrations.concurrency, 4)")
	canary := fs.Int("canary", -1, "up: tenants in the first wave (default migrations.canary, 1; 0: none)")
	tenants := fs.StringSlice("tenants", nil, "up: migrate only these tenants (comma-separated), not the template")
	share := fs.Float64("max-fail-share", -1, "up: stop a wave once more than this share of it failed (default migrations.max_fail_share, 0.1)")
	dry := fs.Bool("dry-run", false, "up: apply and record nothing; say what would be applied")
	fs.Usage = func() { fmt.Fprint(stderr, migrateUsage, "\nFlags:\n", fs.FlagUsages()) }
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fs.Usage()
		if len(args) == 0 {
			return errUsage
		}
		return pflag.ErrHelp
	}
	verb := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if verb != "status" && verb != "up" {
		fs.Usage()
		return fmt.Errorf("%w: unknown migrate command %q", errUsage, verb)
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: migrate %s takes no arguments (got %q)", errUsage, verb, fs.Args())
	}
	fc, err := router.LoadConfig(*path)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	ms := &fc.Migrations
	if fs.Changed("dir") {
		ms.Dir = *dir
	}
	if fs.Changed("concurrency") {
		ms.Concurrency = *concurrency
	}
	if fs.Changed("canary") {
		ms.Canary = *canary
	}
	if fs.Changed("max-fail-share") {
		ms.MaxFailShare = *share
	}
	if fc.Auth.Password == "" && fc.Auth.SCRAMVerifier == "" {
		fc.Auth.Password = "unused" // the admin side serves no clients
	}
	if err := fc.Validate(); err != nil {
		return fmt.Errorf("%w: invalid configuration:\n%w", errConfig, err)
	}
	if verb == "up" && ms.Dir == "" {
		return fmt.Errorf("%w: migrate up needs the migration files: --dir DIR or migrations.dir", errUsage)
	}
	var files []migrate.Migration
	if ms.Dir != "" {
		if files, err = migrate.Load(ms.Dir); err != nil {
			return fmt.Errorf("%w: %w", errConfig, err)
		}
	}
	log, _, err := router.NewLogger(stderr, fc.Log.Format, "warn")
	if err != nil {
		return err
	}
	key, err := catalog.ParseKey(fc.Catalog.Key)
	if err != nil {
		return fmt.Errorf("%w: catalog.key (%s): %w", errConfig, router.EnvCatalogKey, err)
	}
	parts, err := router.BuildUpstream(ctx, fc, log, false)
	if err != nil {
		return err
	}
	defer parts.Close()
	catDSN := fc.Catalog.DSN
	if catDSN == "" {
		catDSN = parts.CatalogDSN
	}
	// Each database in flight holds a catalog session (its lock).
	pool, err := router.OpenPool(ctx, "catalog.dsn", catDSN, int32(ms.Concurrency+2))
	if err != nil {
		return err
	}
	defer pool.Close()
	cat, err := router.OpenCatalog(ctx, pool, key)
	if err != nil {
		return err
	}
	cfg := parts.MigrateConfig(cat, files, *ms, log)
	m := migrate.New(cfg)
	if len(files) > 0 {
		// An edited or misnumbered file is the operator's to fix: exit 2.
		if _, err := cat.CheckMigrations(ctx, catalogFiles(files)); err != nil {
			return fmt.Errorf("%w: %w", errConfig, err)
		}
	}

	if verb == "status" {
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		printStatus(stdout, st)
		if st.Target == 0 {
			return nil // nothing registered: nothing to be behind
		}
		if behind := st.Tenants - st.Versions[st.Target]; behind > 0 || len(st.Failed) > 0 {
			return fmt.Errorf("%d of %d tenants are not recorded at version %d", behind, st.Tenants, st.Target)
		}
		return nil
	}

	opts := migrate.UpOptions{To: *to, Concurrency: ms.Concurrency, Canary: ms.Canary, Tenants: *tenants,
		MaxFailShare: ms.MaxFailShare, DryRun: *dry}
	live := isTerminal(stdout)
	start := time.Now()
	if live {
		opts.Progress = func(p migrate.Progress) { fmt.Fprint(stdout, "\r\x1b[K"+migrateProgress(p, time.Since(start))) }
	}
	rep, err := m.Up(ctx, opts)
	if live {
		fmt.Fprint(stdout, "\r\x1b[K")
	}
	if rep == nil {
		return err
	}
	printUp(stdout, rep, time.Since(start))
	if !rep.DryRun {
		if st, serr := m.Status(context.WithoutCancel(ctx)); serr == nil {
			printStatus(stdout, st)
		}
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("%d failed, %d not reached (%s): run migrate up again once fixed; it resumes", len(rep.Failed), rep.NotRun, rep.Stopped)
	}
	return nil
}

// migrateProgress is the live line: a bar and the counts.
func migrateProgress(p migrate.Progress, elapsed time.Duration) string {
	const width = 30
	n := 0
	if p.Total > 0 {
		n = (p.Done + p.Failed) * width / p.Total
	}
	return fmt.Sprintf("[%s%s] %d/%d tenants  %d failed  %s", strings.Repeat("#", n), strings.Repeat(".", width-n),
		p.Done+p.Failed, p.Total, p.Failed, elapsed.Round(time.Second))
}

func printUp(w io.Writer, rep *migrate.Report, elapsed time.Duration) {
	if rep.DryRun {
		fmt.Fprintf(w, "dry run: %d migrations to apply to reach version %d (template and %d tenants checked); nothing was changed\n",
			rep.Applied, rep.Target, rep.Done)
	} else {
		fmt.Fprintf(w, "version %d: %d of %d tenants done, %d failed, %d not reached; %d migrations applied in %s\n",
			rep.Target, rep.Done, rep.Total, len(rep.Failed), rep.NotRun, rep.Applied, elapsed.Round(time.Millisecond))
	}
	if rep.Stopped != "" {
		fmt.Fprintf(w, "stopped: %s\n", rep.Stopped)
	}
	if len(rep.Failed) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FAILED\tAT VERSION\tERROR")
		for _, f := range rep.Failed {
			name := f.Name
			if f.Kind == catalog.MigrationTemplate {
				name = "template " + name
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", name, f.Version, oneLine(f.Err.Error()))
		}
		_ = tw.Flush()
	}
}

func printStatus(w io.Writer, st *migrate.Status) {
	last := "none registered"
	if n := len(st.Registered); n > 0 {
		last = st.Registered[n-1].File
	}
	fmt.Fprintf(w, "target version %d (%s); %d tenants\n", st.Target, last, st.Tenants)
	if len(st.Unregistered) > 0 {
		fmt.Fprintf(w, "%d migration files not registered yet (migrate up registers them): %s\n", len(st.Unregistered), st.Unregistered[0].File)
	}
	for _, t := range st.Templates {
		fmt.Fprintf(w, "template %s: version %d, %s", t.Name, t.Version, t.Status)
		if t.Error != "" {
			fmt.Fprintf(w, ": %s", oneLine(t.Error))
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tTENANTS")
	versions := slices.Sorted(func(yield func(int64) bool) {
		for v := range st.Versions {
			if !yield(v) {
				return
			}
		}
	})
	for _, v := range slices.Backward(versions) {
		fmt.Fprintf(tw, "%d\t%d\n", v, st.Versions[v])
	}
	if st.Unknown > 0 {
		fmt.Fprintf(tw, "not yet seen\t%d\n", st.Unknown)
	}
	_ = tw.Flush()
	if len(st.Failed)+len(st.Running) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tVERSION\tSTATUS\tSINCE\tERROR")
		for _, s := range append(slices.Clone(st.Failed), st.Running...) {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", s.Name, s.Version, s.Status,
				s.UpdatedAt.UTC().Format("2006-01-02 15:04:05"), oneLine(s.Error))
		}
		_ = tw.Flush()
	}
}

// oneLine keeps a table row on one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func catalogFiles(files []migrate.Migration) []catalog.Migration {
	out := make([]catalog.Migration, len(files))
	for i, f := range files {
		out[i] = catalog.Migration{Version: f.Version, File: f.File, Checksum: f.Checksum}
	}
	return out
}
