package router_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/poll"
	"github.com/pgtenant/pgtenant/router"
)

// ids are the live instance IDs in the registry of r's catalog.
func ids(t *testing.T, r *router.Router) []uint8 {
	t.Helper()
	list, err := r.Catalog().Instances(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []uint8
	for _, in := range list {
		out = append(out, in.ID)
	}
	return out
}

// Instances with instance_id auto on one catalog claim the lowest free IDs
// in the registry, issue cancel keys with the claimed ID (so a cancel sent
// to another instance is forwarded to the session's), and live beside
// instances with a fixed ID, which still refuse a duplicate.
func TestAutoInstanceID(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r1, cfg := start(t, member(nil, router.InstanceIDAuto))
	r2, _ := start(t, member(&cfg, router.InstanceIDAuto))
	r3, _ := start(t, member(&cfg, router.InstanceIDAuto))
	ctx := context.Background()
	fleet := []*router.Router{r1, r2, r3}
	for i, r := range fleet {
		if got := r.InstanceID(); got != uint8(i) {
			t.Errorf("instance %d claimed ID %d, want %d (the lowest free)", i+1, got, i)
		}
	}
	if got := ids(t, r1); !slices.Equal(got, []uint8{0, 1, 2}) {
		t.Fatalf("registry holds IDs %v, want [0 1 2]", got)
	}
	for _, r := range fleet {
		poll.Until(t, 10*time.Second, "every instance to see the whole fleet", func() bool {
			return metric(t, r.Registry(), "pgtenant_cluster_instances", "") == 3
		})
	}

	t.Run("cancel through another instance", func(t *testing.T) {
		raw := make([]byte, 4)
		_, _ = rand.Read(raw)
		tenant := "auto-" + hex.EncodeToString(raw)
		for _, pair := range [][2]int{{0, 2}, {2, 0}, {1, 0}} {
			owner, via := fleet[pair[0]], fleet[pair[1]]
			before := forwards(t, via, "forwarded")
			received := forwards(t, owner, "received")
			s := startSleep(t, owner, tenant)
			at := time.Now()
			send(t, via.Addr().String(), cancelPacket(s.pc.PID(), s.pc.SecretKey()))
			s.cancelledWithin(t, at, time.Second)
			if got := forwards(t, via, "forwarded"); got != before+1 {
				t.Errorf("session on %d, cancel via %d: forwarded %v, want %v", owner.InstanceID(), via.InstanceID(), got, before+1)
			}
			if got := forwards(t, owner, "received"); got != received+1 {
				t.Errorf("session on %d, cancel via %d: received %v, want %v", owner.InstanceID(), via.InstanceID(), got, received+1)
			}
		}
	})

	t.Run("a fixed ID still refuses a duplicate", func(t *testing.T) {
		dup := cfg
		member(&cfg, 1)(&dup) // claimed by r2
		_, err := router.New(ctx, dup, router.Options{})
		if err == nil {
			t.Fatal("an instance with instance_id 1 started while an auto instance holds 1")
		}
		if !strings.Contains(err.Error(), "instance_id 1") || !strings.Contains(err.Error(), "auto") {
			t.Errorf("error does not name instance_id 1 and auto: %v", err)
		}
		// A free fixed ID is taken, and skipped by the next auto.
		fixed, _ := start(t, member(&cfg, 3))
		next, _ := start(t, member(&cfg, router.InstanceIDAuto))
		if fixed.InstanceID() != 3 || next.InstanceID() != 4 {
			t.Errorf("fixed 3 then auto: IDs %d and %d, want 3 and 4", fixed.InstanceID(), next.InstanceID())
		}
	})

	t.Run("two starting at once", func(t *testing.T) {
		before := ids(t, r1)
		var wg sync.WaitGroup
		routers := make([]*router.Router, 2)
		errs := make([]error, 2)
		for i := range routers {
			c := cfg
			member(&cfg, router.InstanceIDAuto)(&c)
			wg.Go(func() { routers[i], errs[i] = router.New(ctx, c, router.Options{}) })
		}
		wg.Wait()
		for i, r := range routers {
			if errs[i] != nil {
				t.Fatalf("instance %d of 2 refused: %v", i+1, errs[i])
			}
			defer r.Close()
		}
		a, b := routers[0].InstanceID(), routers[1].InstanceID()
		if a == b || slices.Contains(before, a) || slices.Contains(before, b) {
			t.Fatalf("started at once: IDs %d and %d (live before: %v), want two distinct free ones", a, b, before)
		}
		if got := ids(t, r1); len(got) != len(before)+2 {
			t.Fatalf("registry holds %v, want %v and two more", got, before)
		}
	})

	t.Run("a freed ID is claimed again", func(t *testing.T) {
		r2.Crash() // its entry expires
		poll.Until(t, 10*time.Second, "instance 1's entry to expire", func() bool {
			return !slices.Contains(ids(t, r1), 1)
		})
		again, _ := start(t, member(&cfg, router.InstanceIDAuto))
		if got := again.InstanceID(); got != 1 {
			t.Errorf("auto after ID 1 expired: claimed %d, want 1", got)
		}
	})
}

// With every ID live, an auto instance refuses to start, saying so.
func TestAutoInstanceIDAllTaken(t *testing.T) {
	pgtest.CheckGoroutines(t)
	r, cfg := start(t, member(nil, router.InstanceIDAuto))
	ctx := context.Background()
	for id := 1; id < 256; id++ {
		reg, err := r.Catalog().Register(ctx, uint8(id), "127.0.0.1:1", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Deregister(context.Background()) })
	}
	c := cfg
	member(&cfg, router.InstanceIDAuto)(&c)
	_, err := router.New(ctx, c, router.Options{})
	if err == nil || !strings.Contains(err.Error(), "all 256 instance IDs") {
		t.Fatalf("auto with all 256 IDs live: %v, want a refusal saying so", err)
	}
}
