package static_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/provision"
	"github.com/pgtenant/pgtenant/provision/static"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestCreateSources(t *testing.T) {
	ctx := context.Background()
	p, err := static.New(static.Config{
		Routes: map[string]string{
			"acme":  "postgres://acme_app:${ACME_PW}@db1.internal:6543/acme?sslmode=verify-full",
			"local": "host=127.0.0.1 port=5433 user=u dbname=d password=p",
			"plain": "postgres://u@db2.internal/d?sslmode=disable",
		},
		Template:    "postgres://{tenant}_app@db-{tenant}.internal:5432/{tenant}",
		PasswordEnv: "TPL_PW",
		Getenv:      env(map[string]string{"ACME_PW": "s3cret/:@", "TPL_PW": "tpl"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tenant string
		want   provision.Endpoint
	}{
		{"acme", provision.Endpoint{Host: "db1.internal", Port: 6543, Database: "acme", User: "acme_app", Password: "s3cret/:@", TLS: "verify-full", ProviderID: "route:acme"}},
		{"local", provision.Endpoint{Host: "127.0.0.1", Port: 5433, Database: "d", User: "u", Password: "p", TLS: "disable", ProviderID: "route:local"}},
		{"plain", provision.Endpoint{Host: "db2.internal", Port: 5432, Database: "d", User: "u", TLS: "disable", ProviderID: "route:plain"}},
		{"t-9", provision.Endpoint{Host: "db-t-9.internal", Port: 5432, Database: "t-9", User: "t-9_app", Password: "tpl", TLS: "require", ProviderID: "template"}},
	} {
		got, err := p.Create(ctx, c.tenant)
		if err != nil {
			t.Fatalf("%s: %v", c.tenant, err)
		}
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.tenant, got, c.want)
		}
	}
}

type memStore map[string]provision.Endpoint

func (m memStore) StaticRoute(_ context.Context, t string) (provision.Endpoint, bool, error) {
	ep, ok := m[t]
	return ep, ok, nil
}

func (m memStore) DeleteStaticRoute(_ context.Context, t string) error {
	if _, ok := m[t]; !ok {
		return provision.ErrTenantNotFound
	}
	delete(m, t)
	return nil
}

func TestStoreAndUnknown(t *testing.T) {
	ctx := context.Background()
	p, err := static.New(static.Config{Routes: map[string]string{"cfg": "postgres://u:p@h/d"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create(ctx, "x"); !errors.Is(err, static.ErrNoRoute) {
		t.Fatalf("unknown tenant without a store: %v, want ErrNoRoute", err)
	}
	st := memStore{"x": {Host: "h", Port: 1, User: "u", Database: "d"}}
	p.SetStore(st)
	if ep, err := p.Create(ctx, "x"); err != nil || ep.Host != "h" {
		t.Fatalf("registered route: %+v, %v", ep, err)
	}
	if err := p.Delete(ctx, "x"); err != nil {
		t.Fatalf("delete registered: %v", err)
	}
	if err := p.Delete(ctx, "x"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := p.Delete(ctx, "cfg"); !errors.Is(err, provision.ErrTenantNotFound) {
		t.Fatalf("delete of a configured route: %v, want ErrTenantNotFound", err)
	}
	if _, err := p.Create(ctx, "x"); !errors.Is(err, static.ErrNoRoute) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	for name, cfg := range map[string]static.Config{
		"bad dsn":          {Routes: map[string]string{"a": "postgres://u@h:notaport/d"}},
		"verify-ca":        {Routes: map[string]string{"a": "postgres://u@h/d?sslmode=verify-ca"}},
		"no tenant":        {Template: "postgres://u@h/d"},
		"password in file": {Template: "postgres://{tenant}:secret@h/d"},
		"env unset":        {Template: "postgres://{tenant}@h/d", PasswordEnv: "NOPE"},
		"env not password": {Routes: map[string]string{"a": "postgres://${USER_NAME}:x@h/d"}},
		"unix socket":      {Routes: map[string]string{"a": "host=/tmp user=u"}},
	} {
		_, err := static.New(cfg)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error repeats the password: %v", name, err)
		}
	}
}
