package resolver_test

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/pgtenant/pgtenant/provision"
)

// fakeProvider counts Create calls. If gate is set, Create waits for it to
// be closed (or for ctx). If err is set, Create fails with it, returning an
// endpoint that carries a password, as a careless provider might.
type fakeProvider struct {
	calls atomic.Int32
	gate  chan struct{}
	err   error
}

const fakePassword = "pw-Zq8-never-show-me"

func (p *fakeProvider) Name() string { return "fake" }

func (p *fakeProvider) Create(ctx context.Context, tenant string) (provision.Endpoint, error) {
	p.calls.Add(1)
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return provision.Endpoint{}, ctx.Err()
		}
	}
	ep := provision.Endpoint{
		Host: "127.0.0.9", Port: 5432, Database: "db_" + tenant,
		User: "u_" + tenant, Password: fakePassword, ProviderID: "db_" + tenant,
	}
	return ep, p.err
}

// downStore is a catalog that cannot be reached.
type downStore struct{}

var errCatalogDown = errors.New("dial tcp 10.9.9.9:5432: connect: connection refused")

func (downStore) Lookup(context.Context, string) (provision.Endpoint, bool, error) {
	return provision.Endpoint{}, false, errCatalogDown
}

func (downStore) Ensure(context.Context, string, string, func(context.Context) (provision.Endpoint, error)) (provision.Endpoint, bool, error) {
	return provision.Endpoint{}, false, errCatalogDown
}
