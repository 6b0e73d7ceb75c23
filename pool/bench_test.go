package pool_test

import (
	"context"
	"testing"

	"github.com/pgtenant/pgtenant/pool"
)

// BenchmarkAcquireRelease is the warm path: an idle connection is taken and
// given back (transaction pooling does this once per transaction).
func BenchmarkAcquireRelease(b *testing.B) {
	f := &fakeServers{}
	m := pool.New(pool.Config{})
	defer m.Close()
	k := key("acme")
	ctx := context.Background()
	dial := f.dial
	c, err := m.Acquire(ctx, k, dial)
	if err != nil {
		b.Fatal(err)
	}
	c.Release(true)
	b.ReportAllocs()
	for b.Loop() {
		c, err := m.Acquire(ctx, k, dial)
		if err != nil {
			b.Fatal(err)
		}
		c.Release(true)
	}
}

// BenchmarkAcquireReleaseParallel: many routes on one server, acquired
// and released from all CPUs (one budget lock).
func BenchmarkAcquireReleaseParallel(b *testing.B) {
	f := &fakeServers{}
	m := pool.New(pool.Config{MaxServerConnections: 1000})
	defer m.Close()
	ctx := context.Background()
	dial := f.dial
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		k := key("acme")
		for pb.Next() {
			c, err := m.Acquire(ctx, k, dial)
			if err != nil {
				b.Error(err)
				return
			}
			c.Release(true)
		}
	})
}

func TestAcquireReleaseAllocs(t *testing.T) {
	f := &fakeServers{}
	m := pool.New(pool.Config{})
	defer m.Close()
	k, ctx, dial := key("acme"), context.Background(), f.dial
	mustAcquire(t, m, k, f).Release(true)
	n := testing.AllocsPerRun(1000, func() {
		c, err := m.Acquire(ctx, k, dial)
		if err != nil {
			t.Fatal(err)
		}
		c.Release(true)
	})
	if n != 0 {
		t.Errorf("a warm Acquire and Release allocate %.1f times", n)
	}
}
