package proxy_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/proxy"
)

// sendCancelFrom sends a CancelRequest for (pid, secret) to addr from the
// local address from and waits for the router to close the connection,
// which it does once it has acted on the request (or dropped it).
func sendCancelFrom(t *testing.T, from, addr string, pid uint32, secret []byte) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	b := binary.BigEndian.AppendUint32(nil, uint32(12+len(secret)))
	b = binary.BigEndian.AppendUint32(b, 80877102)
	b = binary.BigEndian.AppendUint32(b, pid)
	if _, err := c.Write(append(b, secret...)); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
		t.Fatalf("cancel request answered %q (%v), want a silent close", got, err)
	}
}

// TestCancelRateLimit floods the router with random cancel keys from one
// address: only the address's budget reaches the cancel registry (counted
// as unknown), the rest is dropped unread; another address still cancels a
// running query at once.
func TestCancelRateLimit(t *testing.T) {
	pgtest.CheckGoroutines(t)
	clock := &fakeClock{}
	clock.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	m := proxy.NewMetrics(nil)
	r := startRouter(t, newCatalogDB(t), func(c *proxy.Config) {
		c.Now = clock.now
		c.Metrics = m
		c.Limits.CancelRate = 10
		c.Limits.CancelBurst = 20
	})
	count := func(outcome string) int {
		return int(testutil.ToFloat64(m.CancelRequests.WithLabelValues(outcome)))
	}
	flood := func(from string, n int) {
		t.Helper()
		for range n {
			var key [8]byte
			_, _ = rand.Read(key[:])
			sendCancelFrom(t, from, r.addr, binary.BigEndian.Uint32(key[:4]), key[4:])
		}
	}

	flood("127.0.0.1", 200) // the clock stands still: the burst, nothing more
	if got, dropped := count("unknown"), count(proxy.CancelRateLimited); got != 20 || dropped != 180 {
		t.Fatalf("a flood of 200 at once: %d reached the registry, %d dropped; want 20 and 180", got, dropped)
	}
	clock.advance(1500 * time.Millisecond) // 15 tokens
	flood("127.0.0.1", 100)
	if got, dropped := count("unknown"), count(proxy.CancelRateLimited); got != 35 || dropped != 265 {
		t.Fatalf("1.5 s later, 100 more: %d reached the registry in all, %d dropped; want 35 and 265", got, dropped)
	}

	// The flooded address cannot cancel a real query either, another one can at once.
	tenant := newTenant("cxl")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pc, err := pgconn.Connect(ctx, r.dsn(tenant, appSecret))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	done := r.sleepUpstream(t, ctx, pc)
	sendCancelFrom(t, "127.0.0.1", r.addr, pc.PID(), pc.SecretKey())
	if got := count(proxy.CancelRateLimited); got != 266 {
		t.Fatalf("the real key from the flooded address: dropped %d, want 266", got)
	}
	at := time.Now()
	sendCancelFrom(t, "127.0.0.2", r.addr, pc.PID(), pc.SecretKey())
	if err := <-done; pgCode(err) != "57014" {
		t.Fatalf("query cancelled from another address: %v, want 57014", err)
	}
	if d := time.Since(at); d > time.Second {
		t.Fatalf("cancel took %s", d)
	}
	if got := count("forwarded"); got != 1 {
		t.Fatalf("forwarded %d, want 1", got)
	}
}

// BenchmarkCancelFlood is a guessing attack on cancel keys from one client
// address: CancelRequests with random keys (a 4-byte secret, as for a
// protocol 3.0 key, and a 32-byte one, as for 3.2), one connection each,
// sent one after the other as fast as the router takes them. It reports the
// requests the router took a second and those that reached the cancel
// registry (the guesses), without limits.cancel_rate and with the default
// (10 a second, burst 20). README (Cancel keys) quotes it.
func BenchmarkCancelFlood(b *testing.B) {
	for _, secretLen := range []int{4, 32} {
		for _, rate := range []int{0, 10} {
			b.Run("secret="+itoa(uint32(secretLen))+"/cancel_rate="+itoa(uint32(rate)), func(b *testing.B) {
				m := proxy.NewMetrics(nil)
				r := startRouter(b, newCatalogDB(b), func(c *proxy.Config) {
					c.Metrics = m
					c.Limits.CancelRate, c.Limits.CancelBurst = rate, 2*rate
				})
				key := make([]byte, 4+secretLen)
				start := time.Now()
				for b.Loop() {
					_, _ = rand.Read(key)
					c, err := net.Dial("tcp", r.addr)
					if err != nil {
						b.Fatal(err)
					}
					pkt := binary.BigEndian.AppendUint32(nil, uint32(8+len(key)))
					pkt = binary.BigEndian.AppendUint32(pkt, 80877102)
					_, _ = c.Write(append(pkt, key...))
					_, _ = io.Copy(io.Discard, c)
					_ = c.Close()
				}
				secs := time.Since(start).Seconds()
				reached := testutil.ToFloat64(m.CancelRequests.WithLabelValues("unknown"))
				b.ReportMetric(float64(b.N)/secs, "requests/s")
				b.ReportMetric(reached/secs, "guesses/s")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
