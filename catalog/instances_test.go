package catalog_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
)

func TestInstanceRegistry(t *testing.T) {
	pgtest.CheckGoroutines(t)
	pool := pgtest.NewPool(t, pgtest.NewDB(t))
	key := mustKey(t)
	cat := openCatalog(t, pool, key)
	ctx := t.Context()

	live := func() map[uint8]catalog.Instance {
		t.Helper()
		list, err := cat.Instances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[uint8]catalog.Instance{}
		for _, in := range list {
			m[in.ID] = in
		}
		return m
	}
	if m := live(); len(m) != 0 {
		t.Fatalf("new catalog lists instances %v", m)
	}

	one, err := cat.Register(ctx, 1, "10.0.0.1:7000", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Register(ctx, 2, "10.0.0.2:7000", time.Minute); err != nil {
		t.Fatal(err)
	}
	m := live()
	if len(m) != 2 || m[1].PeerAddr != "10.0.0.1:7000" || m[2].PeerAddr != "10.0.0.2:7000" ||
		m[1].StartedAt.IsZero() || m[1].ExpiresAt.Sub(m[1].Heartbeat) != time.Minute {
		t.Fatalf("Instances = %+v", m)
	}

	// A second live instance with the same ID is refused, with what an
	// operator needs to find it.
	_, err = cat.Register(ctx, 1, "10.0.0.9:7000", time.Minute)
	var dup *catalog.DuplicateInstanceError
	if !errors.As(err, &dup) || dup.Other.ID != 1 || dup.Other.PeerAddr != "10.0.0.1:7000" {
		t.Fatalf("duplicate Register: %v, want a DuplicateInstanceError naming 10.0.0.1:7000", err)
	}
	for _, want := range []string{"instance_id 1", "10.0.0.1:7000", "last heartbeat", "expires in"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("duplicate error %q does not say %q", err, want)
		}
	}
	if m := live(); m[1].PeerAddr != "10.0.0.1:7000" {
		t.Fatalf("a refused Register changed the entry: %+v", m[1])
	}

	// A heartbeat pushes the expiry forward.
	before := live()[1].ExpiresAt
	if again, err := one.Heartbeat(ctx); err != nil || again {
		t.Fatalf("Heartbeat: reregistered %v, %v", again, err)
	}
	if after := live()[1].ExpiresAt; !after.After(before) {
		t.Fatalf("expiry %v not after %v", after, before)
	}

	// Deregister frees the ID at once.
	if err := one.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := live()[1]; ok {
		t.Fatal("a deregistered instance is still listed")
	}
	if _, err := cat.Register(ctx, 1, "10.0.0.9:7000", time.Minute); err != nil {
		t.Fatalf("Register after Deregister: %v", err)
	}

	// A catalog made before the registry existed gets the table when it is
	// opened again.
	if _, err := pool.Exec(ctx, `DROP TABLE pgtenant.instances`); err != nil {
		t.Fatal(err)
	}
	again := openCatalog(t, pool, key)
	if _, err := again.Register(ctx, 5, "10.0.0.5:7000", time.Minute); err != nil {
		t.Fatal(err)
	}
}

// An instance that stops heartbeating (killed) expires: it is no longer
// listed, its ID can be taken, and once it is taken the old holder cannot
// come back with a heartbeat.
func TestInstanceExpires(t *testing.T) {
	pgtest.CheckGoroutines(t)
	cat := openCatalog(t, pgtest.NewPool(t, pgtest.NewDB(t)), mustKey(t))
	ctx := t.Context()

	killed, err := cat.Register(ctx, 3, "10.0.0.3:7000", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the entry to expire", func() bool {
		list, err := cat.Instances(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(list) == 0
	})
	next, err := cat.Register(ctx, 3, "10.0.0.30:7000", time.Minute)
	if err != nil {
		t.Fatalf("Register of an expired ID: %v", err)
	}
	_, err = killed.Heartbeat(ctx)
	var dup *catalog.DuplicateInstanceError
	if !errors.As(err, &dup) || dup.Other.PeerAddr != "10.0.0.30:7000" {
		t.Fatalf("heartbeat of the expired holder: %v, want a DuplicateInstanceError", err)
	}
	// Its Deregister does not remove the new holder's entry.
	if err := killed.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if list, err := cat.Instances(ctx); err != nil || len(list) != 1 || list[0].PeerAddr != "10.0.0.30:7000" {
		t.Fatalf("Instances = %+v, %v", list, err)
	}

	// A holder whose entry expired but was not taken registers again on
	// its next heartbeat.
	if err := next.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	late, err := cat.Register(ctx, 4, "10.0.0.4:7000", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "the entry to expire", func() bool {
		list, err := cat.Instances(ctx)
		return err == nil && len(list) == 0
	})
	if again, err := late.Heartbeat(ctx); err != nil || !again {
		t.Fatalf("late heartbeat: reregistered %v, %v; want a new registration", again, err)
	}
}

// Instances starting at once with the same ID, each with its own catalog
// connection: exactly one is registered, the others are refused.
func TestRegisterConcurrently(t *testing.T) {
	pgtest.CheckGoroutines(t)
	dsn := pgtest.NewDB(t)
	key := mustKey(t)
	const instances = 8
	cats := make([]*catalog.Catalog, instances)
	for i := range cats {
		cats[i] = openCatalog(t, pgtest.NewPool(t, dsn), key)
	}
	errs := make([]error, instances)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, cat := range cats {
		wg.Go(func() {
			<-start
			_, errs[i] = cat.Register(t.Context(), 7, "10.0.0.7:"+string(rune('0'+i)), time.Minute)
		})
	}
	close(start)
	wg.Wait()
	won := 0
	for _, err := range errs {
		var dup *catalog.DuplicateInstanceError
		switch {
		case err == nil:
			won++
		case !errors.As(err, &dup):
			t.Errorf("Register: %v, want nil or a DuplicateInstanceError", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d instances registered ID 7, want exactly 1", won)
	}
}
