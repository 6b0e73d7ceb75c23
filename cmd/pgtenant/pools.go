package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	adminapi "github.com/pgtenant/pgtenant/admin"
	"github.com/pgtenant/pgtenant/router"
)

const poolsUsage = `Usage: pgtenant pools --admin URL [--token TOKEN]

Shows a running router's connection pools (GET /v1/pools), as PgBouncer's
SHOW POOLS does: per pool (tenant, database, user, upstream server) its
clients and server connections and how long clients waited for one, then
each upstream server's budget (pool.max_server_connections) shared by all
its tenants. The token comes from --token or PGTENANT_ADMIN_TOKEN.
`

// runPools prints a router's pools through its admin API.
func runPools(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("pgtenant pools", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	adminURL := fs.String("admin", "", "URL of a router's admin listener, e.g. http://127.0.0.1:9090")
	token := fs.String("token", "", "admin API token (prefer "+router.EnvAdminToken+")")
	fs.Usage = func() { fmt.Fprint(stderr, poolsUsage, "\nFlags:\n", fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: pools takes no arguments", errUsage)
	}
	if *adminURL == "" {
		fs.Usage()
		return fmt.Errorf("%w: pools needs a router's admin listener: --admin URL", errUsage)
	}
	c := apiClient{base: *adminURL, token: cmp.Or(*token, os.Getenv(router.EnvAdminToken))}
	var l adminapi.PoolList
	if err := c.do(ctx, http.MethodGet, "/v1/pools", &l); err != nil {
		return err
	}
	return printPools(stdout, l)
}

func printPools(w io.Writer, l adminapi.PoolList) error {
	if l.Mode == "off" && len(l.Pools) == 0 && len(l.Servers) == 0 {
		_, err := fmt.Fprintln(w, "pooling is off on this router (pool.mode: off): each client connection has an upstream connection of its own")
		return err
	}
	fmt.Fprintf(w, "mode: %s (clients may choose with options='-c pgtenant.pool_mode=session|transaction')\n\n", l.Mode)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tDATABASE\tUSER\tSERVER\tCL_ACTIVE\tCL_WAITING\tSV_ACTIVE\tSV_IDLE\tSV_OPENING\tWAITS\tAVG_WAIT\tMAX_WAIT")
	for _, p := range l.Pools {
		avg := 0.0
		if p.Waits > 0 {
			avg = p.WaitTotalMS / float64(p.Waits)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", p.Tenant, p.Database, p.User, p.Server,
			p.ClientsActive, p.ClientsWaiting, p.ServersActive, p.ServersIdle, p.ServersOpening, p.Waits, msDuration(avg), msDuration(p.MaxWaitMS))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER\tMAX\tOPEN\tACTIVE\tIDLE\tOPENING\tWAITING\tWAITING_TENANTS\tTENANTS\tPOOLS")
	for _, s := range l.Servers {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s.Server, s.Max, s.Open, s.Active, s.Idle, s.Opening,
			s.Waiting, s.WaitingTenants, s.Tenants, s.Pools)
	}
	return tw.Flush()
}

// msDuration shows milliseconds as a duration rounded to 0.1ms.
func msDuration(ms float64) string {
	return (time.Duration(ms * float64(time.Millisecond))).Round(100 * time.Microsecond).String()
}
