package router

import (
	"strings"
	"testing"
)

func TestValidateProviders(t *testing.T) {
	base := func() Config {
		fc := DefaultConfig()
		fc.Provider.Local.AdminDSN = "postgres://admin@127.0.0.1:5432/postgres"
		return fc
	}
	for name, c := range map[string]struct {
		edit func(*Config)
		want string // "" : valid
	}{
		"local alone":      {func(*Config) {}, ""},
		"local and static": {func(fc *Config) { fc.Provider.Also = []string{"static"} }, ""},
		"unknown also":     {func(fc *Config) { fc.Provider.Also = []string{"rdss"} }, `provider.also[0]: "rdss" is not supported`},
		"named twice":      {func(fc *Config) { fc.Provider.Also = []string{"local"} }, "named twice"},
		"static without a catalog": {func(fc *Config) { fc.Provider.Kind = "static" },
			"catalog.dsn: the static provider needs a catalog database"},
		"static with a catalog": {func(fc *Config) { fc.Provider.Kind, fc.Catalog.DSN = "static", "postgres://c@h/c" }, ""},
		"bad static route": {func(fc *Config) {
			fc.Provider.Also = []string{"static"}
			fc.Provider.Static.Routes = map[string]string{"acme": "postgres://u:hunter2@h:x/d"}
		}, "provider.static: static: routes[acme]: cannot be parsed"},
		"static section unused": {func(fc *Config) { fc.Provider.Static.Template = "no tenant here" }, ""},
	} {
		fc := base()
		c.edit(&fc)
		errs := fc.validateProviders()
		var got string
		for _, e := range errs {
			got += e.Error() + "\n"
		}
		switch {
		case c.want == "" && got != "":
			t.Errorf("%s: %s", name, got)
		case c.want != "" && !strings.Contains(got, c.want):
			t.Errorf("%s: %q, want %q", name, got, c.want)
		case strings.Contains(got, "hunter2"):
			t.Errorf("%s: an error repeats a password: %s", name, got)
		}
	}
}
