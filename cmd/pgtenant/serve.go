package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/pgtenant/pgtenant/router"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant serve", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "YAML config file (every key: config.example.yaml)")
	listen := fs.String("listen", "", "address to listen on (overrides listen)")
	logFormat := fs.String("log-format", "", "log format, text or json (overrides log.format)")
	logLevel := fs.String("log-level", "", "log level: debug, info, warn, error (overrides log.level)")
	templateSQL := fs.String("template-sql", "", "SQL file run once in the template database when it is created (overrides provider.local.template_sql)")
	adminListen := fs.String("admin-listen", "", "address of the admin HTTP listener: /metrics, /healthz, /readyz and the /v1 API (overrides admin.listen)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pgtenant serve --config FILE [flags]\n\nSecrets come from the environment: %s, %s, %s, %s, %s, %s.\nSIGHUP reloads the configuration (see config.example.yaml for what it applies).\n\n",
			router.EnvPassword, router.EnvAdminDSN, router.EnvCatalogDSN, router.EnvCatalogKey, router.EnvAdminToken, router.EnvClusterSecret)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	// load reads the file, the environment and the flags; SIGHUP calls it
	// again.
	load := func() (router.Config, error) {
		cfg, err := router.LoadConfig(*path)
		if err != nil {
			return cfg, err
		}
		override(fs, "listen", &cfg.Listen, *listen)
		override(fs, "log-format", &cfg.Log.Format, *logFormat)
		override(fs, "log-level", &cfg.Log.Level, *logLevel)
		override(fs, "template-sql", &cfg.Provider.Local.TemplateSQL, *templateSQL)
		override(fs, "admin-listen", &cfg.Admin.Listen, *adminListen)
		if err := cfg.Validate(); err != nil {
			return cfg, fmt.Errorf("invalid configuration:\n%w", err)
		}
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log, level, err := router.NewLogger(stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return err
	}
	// Listen for SIGHUP from the start, so that one sent as soon as the
	// router is up cannot kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	r, err := router.New(ctx, cfg, router.Options{Log: log, Level: level, Version: version})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pgtenant: routing tenants on %s\n", r.Addr())
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		reloadOnHUP(rctx, hup, r, load, log)
	}()
	err = r.Serve(ctx)
	cancel()
	<-reloaded
	return err
}

// reloadOnHUP reloads the configuration on each SIGHUP until ctx ends. A
// file that does not load or validate changes nothing: the running
// configuration stays, and the reason is logged as a warning.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, r *router.Router, load func() (router.Config, error), log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := load()
		if err != nil {
			log.Warn("config reload failed; keeping the running configuration", "err", err)
			continue
		}
		_ = r.Reload(ctx, cfg) // logs what it applied and what it could not
	}
}

// override sets *dst to v when the flag was given on the command line.
func override(fs *pflag.FlagSet, name string, dst *string, v string) {
	if fs.Changed(name) {
		*dst = v
	}
}

// quote puts s in single quotes for a shell if it needs them.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " '\"$`\\!&;|<>()*?[]{}~#") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
