package admin

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pgtenant/pgtenant/provision"
)

// steps records the calls DeleteTenant makes, in order; errs answers them.
type steps struct {
	calls []string
	errs  map[string]error
}

type stepProvider struct{ *steps }

func (p stepProvider) Name() string { return "test" }
func (p stepProvider) Delete(_ context.Context, tenant string) error {
	p.calls = append(p.calls, "provider "+tenant)
	return p.errs["provider"]
}

type stepCatalog struct{ *steps }

func (c stepCatalog) Delete(_ context.Context, tenant string) error {
	c.calls = append(c.calls, "catalog "+tenant)
	return c.errs["catalog"]
}

func TestDeleteTenantOrder(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		errs    map[string]error
		want    Deletion
		calls   []string
		wantErr error
	}{
		{"both", nil, Deletion{Provider: true, Catalog: true}, []string{"provider a", "catalog a"}, nil},
		{"only a row", map[string]error{"provider": provision.ErrTenantNotFound}, Deletion{Catalog: true}, []string{"provider a", "catalog a"}, nil},
		{"only a database", map[string]error{"catalog": provision.ErrTenantNotFound}, Deletion{Provider: true}, []string{"provider a", "catalog a"}, nil},
		{"neither", map[string]error{"provider": provision.ErrTenantNotFound, "catalog": provision.ErrTenantNotFound}, Deletion{}, []string{"provider a", "catalog a"}, provision.ErrTenantNotFound},
		// The row stays while the database may still be there.
		{"provider fails", map[string]error{"provider": boom}, Deletion{}, []string{"provider a"}, boom},
		{"catalog fails", map[string]error{"catalog": boom}, Deletion{Provider: true}, []string{"provider a", "catalog a"}, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &steps{errs: tt.errs}
			got, err := DeleteTenant(context.Background(), stepProvider{s}, stepCatalog{s}, "a")
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want || !slices.Equal(s.calls, tt.calls) {
				t.Errorf("DeleteTenant = %+v after %q, want %+v after %q", got, s.calls, tt.want, tt.calls)
			}
		})
	}
}
