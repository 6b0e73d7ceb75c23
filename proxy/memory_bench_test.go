package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/proxy"
)

// BenchmarkIdleSession measures what a held, idle session costs the router:
// goroutine stacks and live heap per session, after a GC. The client's own
// heap (pgconn) is measured on direct connections to Postgres and
// subtracted; idle pgconn connections run no goroutines, so every stack
// byte is the router's.
//
// Sub-benchmarks: unpooled (a relay per session), and pooled in
// transaction mode, where an idle session holds no server connection; the
// pool's few connections are not counted per session (all share them).
func BenchmarkIdleSession(b *testing.B) {
	b.Run("unpooled", func(b *testing.B) { benchIdleSession(b, "") })
	// TLS sessions keep the goroutine relay (a TLS connection buffers what
	// it decrypted, which epoll cannot see). The client's own TLS state is
	// not subtracted: its direct connections are plaintext.
	b.Run("unpooled-tls", func(b *testing.B) {
		benchIdleSession(b, "sslmode=require", withTLS(proxy.TLSModeAllow, newTestTLS(b)))
	})
	// (Session mode holds a server connection per session, as unpooled;
	// its pooled connections would also outlast each round, over the test
	// server's max_connections.)
	b.Run("pooled-transaction", func(b *testing.B) {
		opt, _ := withPool(b, proxy.PoolTransaction, pool.Config{})
		benchIdleSession(b, "", opt)
	})
}

func benchIdleSession(b *testing.B, extra string, opts ...routerOpt) {
	const sessions = 200
	// As in production: metrics on, logs at info.
	r := startRouter(b, newCatalogDB(b), append([]routerOpt{func(c *proxy.Config) {
		c.Metrics = proxy.NewMetrics(prometheus.NewRegistry())
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}}, opts...)...)
	tenant := newTenant("idle")
	direct := r.cluster.AdminDSN("postgres")
	routed := r.dsn(tenant, appSecret)
	if extra != "" {
		routed = strings.Replace(routed, "sslmode=disable", extra, 1)
	}
	ctx := context.Background()
	hold := func(dsn string) (stack, heap float64, closeAll func()) {
		conns := make([]*pgconn.PgConn, 0, sessions)
		closeAll = func() {
			for _, c := range conns {
				_ = c.Close(ctx)
			}
		}
		s0, h0 := memNow()
		var mu sync.Mutex
		var g errgroup.Group
		g.SetLimit(32)
		for range sessions {
			g.Go(func() error {
				c, err := pgconn.Connect(ctx, dsn)
				if err != nil {
					return err
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			closeAll()
			b.Fatal(err)
		}
		s1, h1 := memNow()
		// As signed differences: with sessions that hold no goroutine,
		// the stacks may shrink meanwhile.
		return float64(int64(s1)-int64(s0)) / sessions, float64(int64(h1)-int64(h0)) / sessions, closeAll
	}
	// The tenant exists before measuring.
	_, _, c := hold(routed)
	c()
	for b.Loop() {
		_, clientHeap, closeDirect := hold(direct)
		closeDirect()
		stack, heap, closeRouted := hold(routed)
		closeRouted()
		b.ReportMetric(stack, "stack-B/session")
		b.ReportMetric(heap-clientHeap, "heap-B/session")
	}
}

// memNow returns the bytes of goroutine stacks and of live heap after a GC.
func memNow() (stack, heap uint64) {
	runtime.GC()
	runtime.GC() // the second cycle also frees what the first one's finalizers released
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.StackInuse, m.HeapAlloc
}
