package proxy

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultTenantPattern is the tenant IDs accepted when TenantConfig.Pattern is
// nil: 1 to 48 lower-case letters, digits, '_' and '-', starting with a letter
// or digit. Short enough that a prefix plus the ID fits Postgres' 63-byte
// identifier limit.
const DefaultTenantPattern = `^[a-z0-9][a-z0-9_-]{0,47}$`

var defaultTenantRE = regexp.MustCompile(DefaultTenantPattern)

// TenantConfig says where in a connection the tenant ID is named and what a
// valid one looks like. The zero value takes the whole user name and
// validates it against DefaultTenantPattern.
type TenantConfig struct {
	// Separator splits "role<sep>tenant" on its last occurrence; the tenant is
	// what follows it. Empty means the whole user name is the tenant.
	Separator string
	// Pattern is what a tenant ID must match (anchor it). Nil means
	// DefaultTenantPattern.
	Pattern *regexp.Regexp
	// Carriers are the places a client may name its tenant: CarrierUser,
	// CarrierOptions, CarrierSNI, CarrierDatabase (see carriers.go). Nil
	// means the user name only. When several enabled carriers name a tenant
	// they must name the same one; when the tenant comes from another
	// carrier the user name is only a label (still required, as by
	// Postgres). Combine CarrierUser with others only with a Separator, so
	// that a plain user name names no tenant.
	Carriers []string
	// SNISuffix is the suffix of TLS server names that carry a tenant
	// (".db.example.com": tenant acme connects to acme.db.example.com).
	// Required with CarrierSNI, and only then.
	SNISuffix string
}

func (c *TenantConfig) pattern() *regexp.Regexp {
	if c.Pattern == nil {
		return defaultTenantRE
	}
	return c.Pattern
}

// Valid reports whether id is a tenant ID under c: the one rule the proxy,
// the admin API and the config's blocked_tenants all apply.
func (c *TenantConfig) Valid(id string) bool {
	return c.pattern().MatchString(id)
}

// Rule says in words what a valid tenant ID is, for error messages.
func (c *TenantConfig) Rule() string {
	if c.Pattern != nil {
		return "an ID matching " + c.Pattern.String()
	}
	return "1-48 lower-case letters, digits, '_' or '-', starting with a letter or digit"
}

// extract returns the tenant ID named by user, or a 28000 ClientError whose
// hint says how to name a tenant.
func (c *TenantConfig) extract(user string) (string, error) {
	tenant := user
	if c.Separator != "" {
		i := strings.LastIndex(user, c.Separator)
		if i < 0 {
			return "", c.invalid(user, "the user name has no \""+c.Separator+"\"")
		}
		tenant = user[i+len(c.Separator):]
	}
	if tenant == "" {
		return "", c.invalid(user, "the tenant ID is empty")
	}
	if !c.Valid(tenant) {
		return "", c.invalid(user, "invalid tenant ID")
	}
	return tenant, nil
}

func (c *TenantConfig) invalid(user, why string) *ClientError {
	rule := c.Rule()
	form := "<tenant>"
	if c.Separator != "" {
		form = "<role>" + c.Separator + "<tenant>"
	}
	return clientErr(codeInvalidAuthSpec,
		fmt.Sprintf("%s in user name %q", why, truncate(user, 64)),
		fmt.Sprintf("Name the tenant in the user name as %s, with %s, e.g. postgres://%s:<secret>@<router>:6432/<db>.", form, rule, strings.ReplaceAll(form, "<tenant>", "tenant_42")),
		nil)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
