package proxy_test

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
)

// BenchmarkQuery runs "SELECT 1" over held connections (simple protocol),
// unpooled and pooled in each mode: the relay's cost per query. Compare
// the sub-benchmarks with each other (and with pgtenant bench against
// PgBouncer), not with a fixed number. cpu-ns/op is the CPU time of the
// whole process (router and client alike, not Postgres) per query: on a
// shared machine it varies less than ns/op.
func BenchmarkQuery(b *testing.B) {
	b.Run("unpooled", func(b *testing.B) { benchQuery(b) })
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		b.Run("pooled-"+string(mode), func(b *testing.B) {
			opt, _ := withPool(b, mode, pool.Config{})
			benchQuery(b, opt)
		})
	}
}

func benchQuery(b *testing.B, opts ...routerOpt) {
	r := startRouter(b, newCatalogDB(b), opts...)
	ctx := context.Background()
	c, err := pgconn.Connect(ctx, r.dsn(newTenant("bq"), appSecret))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(ctx)
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkQueryConcurrent is BenchmarkQuery with 10 tenants of 4 clients
// each querying at once (as pgtenant bench's steady scenario, in process),
// pooled at most 4 server connections per tenant, logged in before the
// clock starts.
func BenchmarkQueryConcurrent(b *testing.B) {
	for _, mode := range []proxy.PoolMode{proxy.PoolSession, proxy.PoolTransaction} {
		b.Run("pooled-"+string(mode), func(b *testing.B) {
			opt, _ := withPool(b, mode, pool.Config{MaxPerTenant: 4})
			r := startRouter(b, newCatalogDB(b), opt)
			ctx := context.Background()
			var conns []*pgconn.PgConn
			for range 10 {
				tenant := newTenant("bqc")
				for range 4 {
					c, err := pgconn.Connect(ctx, r.dsn(tenant, appSecret))
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close(ctx)
					conns = append(conns, c)
				}
			}
			run := func(n int64) {
				var next atomic.Int64
				var wg sync.WaitGroup
				for _, c := range conns {
					wg.Go(func() {
						for next.Add(1) <= n {
							if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
			}
			run(int64(20 * len(conns))) // the pools' server connections logged in
			b.ResetTimer()
			cpu0 := cpuTime()
			run(int64(b.N))
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
