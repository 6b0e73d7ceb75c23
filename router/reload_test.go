package router

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/proxy"
)

func TestChangedKeys(t *testing.T) {
	a := DefaultConfig()
	b := DefaultConfig()
	b.Log.Level = "debug"                    // reloadable
	b.Limits.MaxConnections = 5              // reloadable
	b.BlockedTenants = []string{"x"}         // reloadable
	b.Cache.TTL = time.Minute                // restart
	b.Auth.Password = "secret"               // restart; named, never shown
	b.Upstream.ForwardParams = []string{"a"} // restart
	got := strings.Join(changedKeys(a, b), ",")
	if got != "auth.password,cache.ttl,upstream.forward_params" {
		t.Fatalf("changedKeys = %s", got)
	}
}

// fakeProxy is the proxy's side of the block list.
type fakeProxy struct {
	blocked  []string
	sessions []proxy.SessionInfo
}

func (f *fakeProxy) SetBlocked(l []string)               { f.blocked = l }
func (f *fakeProxy) Sessions(string) []proxy.SessionInfo { return f.sessions }

// fakeStore is a block store in memory.
type fakeStore struct{ list []string }

func (f *fakeStore) Block(_ context.Context, t string) error { f.list = append(f.list, t); return nil }
func (f *fakeStore) Unblock(_ context.Context, t string) error {
	f.list = slices.DeleteFunc(f.list, func(s string) bool { return s == t })
	return nil
}
func (f *fakeStore) BlockedList(context.Context) ([]string, error) { return slices.Clone(f.list), nil }

func TestBlockListRefresh(t *testing.T) {
	p := &fakeProxy{sessions: []proxy.SessionInfo{{Tenant: "a"}, {Tenant: "b"}, {Tenant: "a"}, {Tenant: "c"}}}
	st := &fakeStore{list: []string{"z", "a"}}
	b := newBlockList(st, p, []string{"c", "a"})
	ending, err := b.refresh(context.Background())
	if err != nil || ending != 3 || strings.Join(p.blocked, ",") != "a,c,z" {
		t.Fatalf("ending %d, blocked %v, err %v", ending, p.blocked, err)
	}
	// The file's list is replaced, not added to: a tenant taken off it is
	// let in again (unless the store still blocks it).
	b.setFile(nil)
	if _, err := b.refresh(context.Background()); err != nil || strings.Join(p.blocked, ",") != "a,z" {
		t.Fatalf("after the file's list emptied: blocked %v, err %v", p.blocked, err)
	}
	if err := b.Unblock(context.Background(), "a"); err != nil || strings.Join(p.blocked, ",") != "z" {
		t.Fatalf("after Unblock: blocked %v, err %v", p.blocked, err)
	}
	if err := b.Block(context.Background(), "q"); err != nil || strings.Join(p.blocked, ",") != "q,z" {
		t.Fatalf("after Block: blocked %v, err %v", p.blocked, err)
	}
}
