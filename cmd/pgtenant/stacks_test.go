package main

import (
	"slices"
	"testing"
)

func TestSmallStacksEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		environ []string
		want    []string // nil: no re-exec
	}{
		{"serve", []string{"serve", "--config", "x"}, []string{"HOME=/root"}, []string{"HOME=/root", "GODEBUG=adaptivestackstart=0"}},
		{"dev keeps other settings", []string{"dev"}, []string{"GODEBUG=http2client=0", "A=b"}, []string{"A=b", "GODEBUG=http2client=0,adaptivestackstart=0"}},
		{"operator's choice wins", []string{"serve"}, []string{"GODEBUG=adaptivestackstart=1"}, nil},
		{"after the re-exec", []string{"serve"}, []string{"GODEBUG=x=1,adaptivestackstart=0"}, nil},
		{"duplicates: the first counts", []string{"serve"}, []string{"GODEBUG=", "GODEBUG=adaptivestackstart=1"}, []string{"GODEBUG=adaptivestackstart=0"}},
		{"short-lived commands", []string{"tenants", "list"}, nil, nil},
		{"no arguments", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := smallStacksEnv(tt.args, tt.environ)
			if ok != (tt.want != nil) || !slices.Equal(got, tt.want) {
				t.Fatalf("smallStacksEnv(%q, %q) = %q, %v; want %q", tt.args, tt.environ, got, ok, tt.want)
			}
		})
	}
}
