package proxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

// borrowCtx behaves as context.WithTimeout(parent, connectTimeout) would.
func TestPoolBorrowCtx(t *testing.T) {
	pc := &pooledClient{s: &Server{cfg: Config{ConnectTimeout: 50 * time.Millisecond}}}

	// Only Err asked: the deadline and the parent are followed without a
	// real context, and the next borrow reuses it.
	parent, cancelParent := context.WithCancel(context.Background())
	c := pc.borrowCtx(parent)
	if d, ok := c.Deadline(); !ok || time.Until(d) > 50*time.Millisecond {
		t.Fatalf("Deadline = %v, %v", d, ok)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err = %v, want nil", err)
	}
	cancelParent()
	if err := c.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err after the parent's cancel = %v", err)
	}
	c.stop()
	if err := c.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err after stop = %v", err)
	}
	if c2 := pc.borrowCtx(context.Background()); c2 != c || c2.Err() != nil {
		t.Fatalf("an unused borrowCtx is not reused afresh: %p %p %v", c, c2, c2.Err())
	}
	time.Sleep(60 * time.Millisecond)
	if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline = %v", err)
	}
	c.stop()

	// Done: a real context, closed at the deadline; never reused.
	c = pc.borrowCtx(context.Background())
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after Done = %v", err)
	}
	c.stop()
	if c2 := pc.borrowCtx(context.Background()); c2 == c {
		t.Fatal("a borrowCtx handed out was reused")
	}

	// A parent's cancel reaches a real context; stop cancels one.
	parent, cancelParent = context.WithCancel(context.Background())
	c = pc.borrowCtx(parent)
	done := c.Done()
	cancelParent()
	<-done
	if err := c.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err = %v", err)
	}
	c = pc.borrowCtx(context.Background())
	called := make(chan struct{})
	context.AfterFunc(c, func() { close(called) }) // as pool.Server's exchange does
	c.stop()
	<-called
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err after stop = %v", c.Err())
	}

	// A parent's earlier deadline wins.
	parent, cancelParent = context.WithTimeout(context.Background(), time.Millisecond)
	defer cancelParent()
	c = pc.borrowCtx(parent)
	if d, _ := c.Deadline(); time.Until(d) > time.Millisecond {
		t.Fatalf("Deadline %v is not the parent's", d)
	}
}
