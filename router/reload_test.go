package router

import (
	"context"
	"maps"
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

// fakeModes is the proxy's and the store's side of the per-tenant pool
// modes, in memory.
type fakeModes struct {
	stored  map[string]string
	applied map[string]proxy.PoolMode
}

func (f *fakeModes) SetPoolMode(_ context.Context, t, m string) error { f.stored[t] = m; return nil }
func (f *fakeModes) ClearPoolMode(_ context.Context, t string) error  { delete(f.stored, t); return nil }
func (f *fakeModes) PoolModes(context.Context) (map[string]string, error) {
	return maps.Clone(f.stored), nil
}
func (f *fakeModes) SetTenantPoolModes(m map[string]proxy.PoolMode) { f.applied = m }
func (f *fakeModes) TenantPoolModes() map[string]proxy.PoolMode     { return f.applied }

func TestTenantPoolModesApply(t *testing.T) {
	f := &fakeModes{stored: map[string]string{"a": "off"}}
	p := &tenantPoolModes{store: f, proxy: f}
	ctx := context.Background()
	if err := p.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if m, ok := f.applied["a"]; !ok || m != proxy.PoolOff || p.PoolMode("a") != "off" {
		t.Fatalf("applied %v, PoolMode(a) %q", f.applied, p.PoolMode("a"))
	}
	if err := p.SetPoolMode(ctx, "b", "transaction"); err != nil || f.applied["b"] != proxy.PoolTransaction || p.PoolMode("b") != "transaction" {
		t.Fatalf("after SetPoolMode: applied %v, err %v", f.applied, err)
	}
	if err := p.SetPoolMode(ctx, "b", "statement"); err == nil {
		t.Fatal("SetPoolMode took statement")
	}
	if err := p.SetPoolMode(ctx, "a", ""); err != nil || len(f.applied) != 1 || p.PoolMode("a") != "" {
		t.Fatalf("after clearing a: applied %v, err %v", f.applied, err)
	}
}
