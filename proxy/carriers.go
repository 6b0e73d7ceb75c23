package proxy

import (
	"errors"
	"fmt"
	"strings"
)

// Tenant carriers: the places in a connection where a client may name its
// tenant (TenantConfig.Carriers).
const (
	// CarrierUser is the user name: the whole of it, or what follows the
	// last TenantConfig.Separator.
	CarrierUser = "user"
	// CarrierOptions is the options startup parameter: "-c tenant=<id>"
	// (also "-ctenant=<id>", "--tenant=<id>" or a bare "tenant=<id>"), among
	// any other options. The router removes it before forwarding the options
	// upstream, where "tenant" is no setting.
	CarrierOptions = "options"
	// CarrierSNI is the first label of the TLS server name (SNI) sent by the
	// client, when the rest is TenantConfig.SNISuffix:
	// <tenant>.db.example.com with the suffix .db.example.com.
	CarrierSNI = "sni"
	// CarrierDatabase is the database name the client asks for.
	CarrierDatabase = "database"
)

// tenantOption is the name of the tenant option in the options parameter.
const tenantOption = "tenant"

// Validate checks the carriers and the SNI suffix. New calls it.
func (c *TenantConfig) Validate() error {
	seen := make(map[string]bool, len(c.Carriers))
	for _, k := range c.Carriers {
		switch k {
		case CarrierUser, CarrierOptions, CarrierSNI, CarrierDatabase:
		default:
			return fmt.Errorf("proxy: unknown tenant carrier %q (want %s, %s, %s or %s)",
				k, CarrierUser, CarrierOptions, CarrierSNI, CarrierDatabase)
		}
		if seen[k] {
			return fmt.Errorf("proxy: tenant carrier %q listed twice", k)
		}
		seen[k] = true
	}
	if c.Carriers != nil && len(c.Carriers) == 0 {
		return errors.New("proxy: no tenant carrier enabled (nil means the user name)")
	}
	suffix := strings.TrimPrefix(c.SNISuffix, ".")
	switch {
	case seen[CarrierSNI] && suffix == "":
		return errors.New("proxy: the sni tenant carrier needs an SNI suffix (e.g. .db.example.com)")
	case !seen[CarrierSNI] && c.SNISuffix != "":
		return errors.New("proxy: an SNI suffix is set but the sni tenant carrier is not enabled")
	case strings.ContainsAny(suffix, " /:*") || strings.Contains(suffix, ".."):
		return fmt.Errorf("proxy: SNI suffix %q is not a DNS name", c.SNISuffix)
	}
	return nil
}

// carriers returns the enabled carriers; nil means the user name only.
func (c *TenantConfig) carriers() []string {
	if c.Carriers == nil {
		return []string{CarrierUser}
	}
	return c.Carriers
}

// userOnly reports whether the tenant can only come from the user name, as
// before carriers existed (same messages as then).
func (c *TenantConfig) userOnly() bool {
	return len(c.Carriers) == 0 || (len(c.Carriers) == 1 && c.Carriers[0] == CarrierUser)
}

// sniSuffix is the configured suffix, lower case, with its leading dot.
func (c *TenantConfig) sniSuffix() string {
	s := strings.ToLower(strings.TrimPrefix(c.SNISuffix, "."))
	if s == "" {
		return ""
	}
	return "." + s
}

// carrierValue is the tenant one carrier names.
type carrierValue struct {
	carrier, tenant string
}

// fromStartup finds the tenant named by the startup packet p (and the TLS
// server name p.sni) in the enabled carriers, which must agree. It removes
// the tenant option from p.params["options"] so that it is not forwarded
// upstream. Errors are 28000 ClientErrors whose hint lists every enabled way
// to name a tenant.
func (c *TenantConfig) fromStartup(p *startupPacket) (string, error) {
	user := p.params["user"]
	if c.userOnly() {
		return c.extract(user)
	}
	var found []carrierValue
	add := func(carrier, tenant string) error {
		if tenant == "" {
			return c.refuse(fmt.Sprintf("the tenant ID in the %s is empty", carrierName(carrier)))
		}
		if !c.pattern().MatchString(tenant) {
			return c.refuse(fmt.Sprintf("invalid tenant ID %q in the %s", truncate(tenant, 64), carrierName(carrier)))
		}
		found = append(found, carrierValue{carrier, tenant})
		return nil
	}
	for _, k := range c.carriers() {
		var err error
		switch k {
		case CarrierUser:
			if t, ok := c.userTenant(user); ok {
				err = add(k, t)
			}
		case CarrierOptions:
			tenants := takeOption(p.params, tenantOption)
			if len(tenants) == 0 {
				continue
			}
			for _, t := range tenants[1:] {
				if t != tenants[0] {
					return "", c.refuse(fmt.Sprintf("the options parameter names two tenants, %q and %q",
						truncate(tenants[0], 64), truncate(t, 64)))
				}
			}
			err = add(k, tenants[0])
		case CarrierSNI:
			if t, ok, why := c.sniTenant(p.sni); why != "" {
				err = c.refuse(why)
			} else if ok {
				err = add(k, t)
			}
		case CarrierDatabase:
			if db := p.params["database"]; db != "" {
				err = add(k, db)
			}
		}
		if err != nil {
			return "", err
		}
	}
	if len(found) == 0 {
		return "", c.refuse("no tenant named in the connection")
	}
	for _, v := range found[1:] {
		if v.tenant != found[0].tenant {
			return "", clientErr(codeInvalidAuthSpec,
				fmt.Sprintf("conflicting tenants: the %s names %q but the %s names %q",
					carrierName(found[0].carrier), found[0].tenant, carrierName(v.carrier), v.tenant),
				"Name the tenant in one place only, or the same tenant everywhere. "+c.ways(), nil)
		}
	}
	return found[0].tenant, nil
}

// userTenant is the tenant the user name carries, if any. With a separator,
// a user name without one names no tenant (it is just a role label).
func (c *TenantConfig) userTenant(user string) (string, bool) {
	if c.Separator == "" {
		return user, user != ""
	}
	i := strings.LastIndex(user, c.Separator)
	if i < 0 {
		return "", false
	}
	return user[i+len(c.Separator):], true
}

// sniTenant is the tenant the TLS server name carries: its first label when
// the rest is the configured suffix. A server name with another suffix (or
// none: no TLS, or a client that sends no SNI) names no tenant; one with
// several labels before the suffix is refused (why is set).
func (c *TenantConfig) sniTenant(sni string) (tenant string, ok bool, why string) {
	suffix := c.sniSuffix()
	name := strings.ToLower(strings.TrimSuffix(sni, ".")) // host names are case-insensitive
	label, found := strings.CutSuffix(name, suffix)
	if suffix == "" || !found || label == "" {
		return "", false, ""
	}
	if strings.Contains(label, ".") {
		return "", false, fmt.Sprintf("the TLS server name %q has more than one label before %q", truncate(sni, 128), suffix)
	}
	return label, true, ""
}

// noUserHint is the hint for a startup packet without a user name.
func (c *TenantConfig) noUserHint() string {
	if c.userOnly() {
		return "Put the tenant in the user name: postgres://<tenant>:<secret>@<router>:6432/<db>."
	}
	return "Set a user name (any label will do when the tenant is named elsewhere). " + c.ways()
}

func carrierName(k string) string {
	switch k {
	case CarrierUser:
		return "user name"
	case CarrierOptions:
		return "options parameter"
	case CarrierSNI:
		return "TLS server name (SNI)"
	case CarrierDatabase:
		return "database name"
	}
	return k
}

func (c *TenantConfig) refuse(msg string) *ClientError {
	return clientErr(codeInvalidAuthSpec, msg, c.ways(), nil)
}

// ways is a hint listing every enabled way to name a tenant, with examples.
func (c *TenantConfig) ways() string {
	const ex = "tenant_42"
	var ways []string
	for _, k := range c.carriers() {
		switch k {
		case CarrierUser:
			form := ex
			if c.Separator != "" {
				form = "<role>" + c.Separator + ex
			}
			ways = append(ways, fmt.Sprintf("in the user name, e.g. postgres://%s:<secret>@<router>:6432/<db>", form))
		case CarrierOptions:
			ways = append(ways, fmt.Sprintf("in the options parameter, e.g. options='-c %s=%s' (PGOPTIONS='-c %s=%s')", tenantOption, ex, tenantOption, ex))
		case CarrierSNI:
			ways = append(ways, fmt.Sprintf("in the host name over TLS (SNI), e.g. postgres://<user>:<secret>@%s%s:6432/<db>?sslmode=require", ex, c.sniSuffix()))
		case CarrierDatabase:
			ways = append(ways, fmt.Sprintf("as the database name, e.g. postgres://<user>:<secret>@<router>:6432/%s", ex))
		}
	}
	rule := "1-48 lower-case letters, digits, '_' or '-', starting with a letter or digit"
	if c.Pattern != nil {
		rule = "matching " + c.Pattern.String()
	}
	return "Name the tenant " + strings.Join(ways, "; or ") + ". A tenant ID is " + rule + "."
}

// splitTenantOption removes the tenant option from an options startup
// parameter and returns the other options and the tenant values found (see
// cutOption).
func splitTenantOption(opts string) (rest string, tenants []string) {
	return cutOption(opts, tenantOption)
}

// takeOption removes setting name from params' options parameter (see
// cutOption) and returns the values it named; the options that are left
// are kept, or the parameter dropped when none are.
func takeOption(params map[string]string, name string) []string {
	opts, ok := params["options"]
	if !ok {
		return nil
	}
	rest, values := cutOption(opts, name)
	switch {
	case len(values) == 0:
	case rest == "":
		delete(params, "options")
	default:
		params["options"] = rest
	}
	return values
}

// optToken is one white-space separated word of an options parameter: as
// written, and with its backslash escapes undone.
type optToken struct{ raw, val string }

// optTokens splits an options startup parameter as Postgres does
// (pg_split_opts: on white space, a backslash escapes the next character).
func optTokens(opts string) []optToken {
	var toks []optToken
	for i := 0; i < len(opts); {
		if isOptSpace(opts[i]) {
			i++
			continue
		}
		start := i
		var val strings.Builder
		for i < len(opts) && !isOptSpace(opts[i]) {
			if opts[i] == '\\' && i+1 < len(opts) {
				i++
			}
			val.WriteByte(opts[i])
			i++
		}
		toks = append(toks, optToken{raw: opts[start:i], val: val.String()})
	}
	return toks
}

// cutOption removes setting name from an options startup parameter and
// returns the other options, kept as they were written, and the values
// found. It recognises "-c name=X", "-cname=X", "--name=X" and a bare
// "name=X" (the name is case-insensitive, as setting names are).
func cutOption(opts, name string) (rest string, values []string) {
	toks := optTokens(opts)
	valueOf := func(s string) (string, bool) {
		n, v, ok := strings.Cut(s, "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(n), name) {
			return "", false
		}
		return v, true
	}
	kept := make([]string, 0, len(toks))
	for i := 0; i < len(toks); i++ {
		v := toks[i].val
		switch {
		case v == "-c" && i+1 < len(toks):
			if t, ok := valueOf(toks[i+1].val); ok {
				values = append(values, t)
				i++
				continue
			}
			kept = append(kept, toks[i].raw, toks[i+1].raw)
			i++
			continue
		case strings.HasPrefix(v, "--"):
			if t, ok := valueOf(v[2:]); ok {
				values = append(values, t)
				continue
			}
		case strings.HasPrefix(v, "-c"):
			if t, ok := valueOf(v[2:]); ok {
				values = append(values, t)
				continue
			}
		case !strings.HasPrefix(v, "-"):
			if t, ok := valueOf(v); ok {
				values = append(values, t)
				continue
			}
		}
		kept = append(kept, toks[i].raw)
	}
	if len(values) == 0 {
		return opts, nil
	}
	return strings.Join(kept, " "), values
}

// isOptSpace is C's isspace, which pg_split_opts splits on.
func isOptSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f'
}
