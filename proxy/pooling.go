package proxy

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/pool"
	"github.com/pgtenant/pgtenant/resolver"
)

// PoolMode says how clients share upstream server connections.
type PoolMode string

// Pool modes, as PgBouncer names them.
const (
	// PoolOff gives each client an upstream connection of its own, logged
	// in with the client's startup parameters and closed when it leaves.
	PoolOff PoolMode = ""
	// PoolSession lends a pooled server connection to a client until it
	// disconnects; it is then reset (PoolConfig.ResetQuery) and kept.
	PoolSession PoolMode = "session"
	// PoolTransaction lends a server connection from the start of a
	// transaction (or a lone statement) to its end, the ReadyForQuery 'I'
	// that follows; session state does not survive between them.
	PoolTransaction PoolMode = "transaction"
)

// poolModeOption is the setting a client names in its options parameter to
// choose its own pool mode: options='-c pgtenant.pool_mode=session'.
const poolModeOption = "pgtenant.pool_mode"

// PoolConfig turns pooling on. The zero value is off.
type PoolConfig struct {
	// Mode is the mode of clients that do not choose one themselves.
	Mode PoolMode
	// Manager holds the server connections and their budgets; required
	// unless Mode is PoolOff. Clients may ask for a pooled mode only when
	// it is set.
	Manager *pool.Manager
	// ResetQuery readies a session-mode server connection for the next
	// client. Empty means pool.DefaultResetQuery (DISCARD ALL). Transaction
	// mode resets nothing, as PgBouncer does.
	ResetQuery string
	// ServerCheckDelay: a server connection idle longer than this is
	// checked (an empty query) before it is lent, as PgBouncer's
	// server_check_delay. Zero means 30s; negative, never.
	ServerCheckDelay time.Duration
}

func (c *PoolConfig) serverCheckDelay() time.Duration {
	if c.ServerCheckDelay == 0 {
		return 30 * time.Second
	}
	return c.ServerCheckDelay
}

func (c *PoolConfig) validate() error {
	switch c.Mode {
	case PoolOff:
		return nil
	case PoolSession, PoolTransaction:
	default:
		return fmt.Errorf("proxy: pool mode %q is not %q or %q", c.Mode, PoolSession, PoolTransaction)
	}
	if c.Manager == nil {
		return errors.New("proxy: pooling needs a pool.Manager")
	}
	return nil
}

func (c *PoolConfig) resetQuery() string {
	if c.ResetQuery == "" {
		return pool.DefaultResetQuery
	}
	return c.ResetQuery
}

// setting is one session setting a pooled client asked for.
type setting struct{ name, value string }

// trackedParams are the settings the server reports in ParameterStatus
// that a client may change: a pooled client keeps what it was told of
// them (and what it later SETs of them), whatever server it lands on.
// The others it reports (server_version, is_superuser, …) are the
// server's own.
var trackedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true, "intervalstyle": true,
	"timezone": true, "standard_conforming_strings": true, "search_path": true,
}

// endpointOption is the setting a client names in its options parameter to
// choose the upstream endpoint: options='-c pgtenant.endpoint=direct' for
// the compute itself rather than Neon's -pooler (PgBouncer, transaction
// mode) host; 'pooler' is the default.
const endpointOption = "pgtenant.endpoint"

// directEndpoint reports whether the client asked for the direct endpoint,
// and drops the endpoint option from params.
func directEndpoint(params map[string]string) (bool, error) {
	vals := takeOption(params, endpointOption)
	direct := false
	for _, v := range vals {
		switch strings.ToLower(v) {
		case "direct":
			direct = true
		case "pooler":
			direct = false
		default:
			return false, clientErr(codeInvalidParameterValue, fmt.Sprintf("invalid value for parameter %q: %q", endpointOption, truncate(v, 64)),
				"Use direct or pooler.", nil)
		}
	}
	return direct, nil
}

// SetTenantPoolModes replaces the per-tenant pool modes (none until the
// first call): a tenant listed is pooled in its mode instead of
// Config.Pool.Mode, unless its client names pgtenant.pool_mode itself.
// PoolOff gives the tenant unpooled connections; PoolSession and
// PoolTransaction take effect only when Config.Pool has a Manager (else
// the tenant is unpooled). Values that are no pool mode are ignored.
// Sessions already running keep their mode. Safe for concurrent use.
func (s *Server) SetTenantPoolModes(modes map[string]PoolMode) {
	m := make(map[string]PoolMode, len(modes))
	for t, mode := range modes {
		switch mode {
		case PoolOff, PoolSession, PoolTransaction:
			m[t] = mode
		default:
			s.log.Warn("ignoring an unknown per-tenant pool mode", "tenant", t, "mode", string(mode))
		}
	}
	s.tenantModes.Store(&m)
}

// TenantPoolModes returns a copy of SetTenantPoolModes' last map (empty
// before the first call). Safe for concurrent use.
func (s *Server) TenantPoolModes() map[string]PoolMode {
	p := s.tenantModes.Load()
	if p == nil {
		return map[string]PoolMode{}
	}
	return maps.Clone(*p)
}

// tenantPoolMode is tenant's mode from SetTenantPoolModes, if it has one.
func (s *Server) tenantPoolMode(tenant string) (PoolMode, bool) {
	p := s.tenantModes.Load()
	if p == nil {
		return "", false
	}
	m, ok := (*p)[tenant]
	return m, ok
}

// pooledStartup is what a pooled client's startup packet asks of its
// session: its pool mode and its settings, by lower-case name. The mode
// is the client's option, else the tenant's (SetTenantPoolModes), else the
// router's; a client on the direct endpoint is unpooled. A pooled server
// connection is logged in with the route's parameters only; the client's
// settings are SET on whatever connection it is lent.
func (s *Server) pooledStartup(tenant string, direct bool, params map[string]string) (PoolMode, map[string]setting, error) {
	mode := s.cfg.Pool.Mode
	if tm, ok := s.tenantPoolMode(tenant); ok {
		mode = tm
		if s.cfg.Pool.Manager == nil {
			mode = PoolOff // as the client option: nothing to pool with
		}
	}
	want := make(map[string]setting, len(params))
	for _, m := range takeOption(params, poolModeOption) {
		switch PoolMode(strings.ToLower(m)) {
		case PoolSession, PoolTransaction:
			if s.cfg.Pool.Manager == nil {
				// Unpooled, the client has a connection of its own: more
				// than either mode promises.
				continue
			}
			mode = PoolMode(strings.ToLower(m))
		default:
			return "", nil, clientErr(codeInvalidParameterValue, fmt.Sprintf("invalid value for parameter %q: %q", poolModeOption, m),
				"Use session or transaction.", nil)
		}
	}
	if direct {
		mode = PoolOff
	}
	if mode == PoolOff {
		return mode, nil, nil
	}
	for k, v := range params {
		if k != "options" && s.cfg.Upstream.forwards(k) {
			want[strings.ToLower(k)] = setting{k, v}
		}
	}
	opts := params["options"]
	toks := optTokens(opts)
	for i := 0; i < len(toks); i++ {
		v := toks[i].val
		switch {
		case v == "-c" && i+1 < len(toks):
			i++
			v = toks[i].val
		case strings.HasPrefix(v, "--"):
			v = v[2:]
		case strings.HasPrefix(v, "-c"):
			v = v[2:]
		default:
			return "", nil, clientErr(codeFeatureNotSupported,
				fmt.Sprintf("the options parameter %q is not supported with connection pooling", truncate(opts, 64)),
				"Pass settings as '-c name=value' (or '--name=value'); other server options need a connection of its own.", nil)
		}
		name, val, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return "", nil, clientErr(codeProtocolViolation, fmt.Sprintf("invalid option %q in the options parameter", truncate(v, 64)),
				"Pass settings as '-c name=value'.", nil)
		}
		want[strings.ToLower(name)] = setting{name, val}
	}
	return mode, want, nil
}

// settingsTag fingerprints want (FNV-1a over its sorted names and values);
// never zero.
func settingsTag(want map[string]setting) uint64 {
	h := fnv.New64a()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write([]byte(want[k].value))
		h.Write([]byte{0})
	}
	return max(h.Sum64(), 1)
}

// serverValue is what the server's session says for name: its last
// ParameterStatus, or what was SET on it for a setting it does not report.
func serverValue(c *pool.Conn, name string) (string, bool) {
	if v, ok := paramOf(c.Params, name); ok {
		return v, true
	}
	v, ok := c.Settings[strings.ToLower(name)]
	return v, ok
}

// applySettings SETs on c what want says and c's session does not, in one
// round trip. An error the server sends (a bad value) comes back as
// *pgconn.PgError.
func applySettings(ctx context.Context, c *pool.Conn, want map[string]setting) error {
	var q strings.Builder
	var applied []setting
	for _, k := range slices.Sorted(maps.Keys(want)) {
		st := want[k]
		if cur, ok := serverValue(c, st.name); ok && cur == st.value {
			continue
		}
		fmt.Fprintf(&q, "SET %s TO %s;", pgx.Identifier{st.name}.Sanitize(), quoteLiteral(st.value))
		applied = append(applied, st)
	}
	if len(applied) == 0 {
		return nil
	}
	if err := c.Exec(ctx, q.String()); err != nil {
		return err
	}
	for _, st := range applied {
		if _, reported := paramOf(c.Params, st.name); !reported {
			if c.Settings == nil {
				c.Settings = make(map[string]string)
			}
			c.Settings[strings.ToLower(st.name)] = st.value
		}
	}
	return nil
}

func paramOf(params map[string]string, name string) (string, bool) {
	for k, v := range params {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// quoteLiteral quotes a value as an SQL string literal, safe whatever
// standard_conforming_strings says (as libpq's PQescapeLiteral).
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return "'" + s + "'"
}

// acquire borrows a logged-in server connection of tenant's route's pool,
// queueing under the server's budget, through routed (known: the route
// resolved last, tried first, knownKey its pool's Key; a pooled client
// borrows once per transaction).
func (s *Server) acquire(ctx context.Context, tenant string, known *resolver.Route, knownKey pool.Key) (*pool.Conn, resolver.Route, error) {
	return routed(ctx, s, tenant, known, func(rt resolver.Route) (*pool.Conn, resolver.Route, error) {
		key := knownKey
		if known == nil || rt.Endpoint != known.Endpoint {
			key = pool.KeyFor(tenant, rt.Endpoint)
		}
		c, err := s.acquireChecked(ctx, key, func(ctx context.Context) (pool.Server, error) {
			dialStart := time.Now()
			hj, err := s.login(ctx, rt, s.upstreamOf(rt).upstreamParams(nil, rt.Host))
			if err != nil {
				return pool.Server{}, err
			}
			s.cfg.Metrics.upstreamConnected(dialStart)
			return pool.FromHijacked(hj), nil
		})
		if err != nil {
			return nil, rt, s.acquireError(tenant, err)
		}
		return c, rt, nil
	})
}

// acquireError is how a failed Manager.Acquire reaches the client.
func (s *Server) acquireError(tenant string, err error) error {
	var be *pool.BudgetError
	var we *pool.WaitError
	switch {
	case errors.As(err, &be):
		return budgetError(be)
	case errors.As(err, &we) && errors.Is(err, context.DeadlineExceeded):
		// Queued past connect_timeout (shorter than pool.queue_timeout):
		// the server is fine, its budget busy.
		return clientErr(codeCannotConnectNow,
			fmt.Sprintf("no server connection for tenant %q within connect_timeout (%s): all of the pool's connections to %s stayed in use",
				tenant, s.cfg.connectTimeout(), we.Server),
			"Retry; if it persists, the tenant's server needs a larger pool.max_server_connections, or clients hold transactions open too long.", err)
	case errors.Is(err, pool.ErrClosed):
		return errShuttingDown()
	}
	return err
}

// acquireChecked is Manager.Acquire, with a connection that sat idle longer
// than PoolConfig.ServerCheckDelay checked with an empty query first, as
// PgBouncer's server_check_query does: a server that went away meanwhile
// (restarted, idle_session_timeout, a Neon compute scaled to zero) is
// closed and another taken, rather than failing the client's transaction.
func (s *Server) acquireChecked(ctx context.Context, key pool.Key, dial pool.DialFunc) (*pool.Conn, error) {
	delay := s.cfg.Pool.serverCheckDelay()
	for {
		c, err := s.cfg.Pool.Manager.Acquire(ctx, key, dial)
		if err != nil || delay < 0 || c.IdleSince().IsZero() || time.Since(c.IdleSince()) < delay {
			return c, err
		}
		cerr := c.Exec(ctx, "")
		if cerr == nil {
			return c, nil
		}
		c.Release(false)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.log.Debug("pooled server connection failed its check; closed", "server", key.Server, "err", cerr)
	}
}

// budgetError is a full budget, told to the client as Postgres tells it
// of max_connections.
func budgetError(be *pool.BudgetError) *ClientError {
	msg := fmt.Sprintf("too many connections: all %d server connections of the router's pool for this database server are in use", be.Limit)
	if be.Tenant != "" {
		msg = fmt.Sprintf("too many connections for tenant %q: it holds all %d server connections it may (pool.max_per_tenant)", be.Tenant, be.Limit)
	}
	return clientErr(codeTooManyConnections, msg,
		fmt.Sprintf("Waited %s (pool.queue_timeout). Retry later, use fewer connections at once, or raise pool.max_server_connections.", be.Waited.Round(time.Millisecond)),
		be)
}

// settingError is a setting the server refused, told to the client as
// Postgres tells it of a bad startup parameter: FATAL, with the code.
func settingError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &ClientError{Code: pgErr.Code, Msg: pgErr.Message, Hint: pgErr.Hint, Err: err}
	}
	return clientErr(codeConnectionFailure, "lost the connection to the tenant's database while applying the session's settings",
		"Retry.", err)
}
