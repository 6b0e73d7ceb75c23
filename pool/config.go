package pool

import "time"

// Defaults of Config's zero values.
const (
	DefaultMaxServerConnections = 80
	DefaultQueueTimeout         = 30 * time.Second
	DefaultIdleTimeout          = 10 * time.Minute
	DefaultTurn                 = 20 * time.Millisecond
)

// DefaultResetQuery is the reset query of session pooling, as PgBouncer's
// server_reset_query: it drops everything a session may have set up
// (settings, prepared statements, temporary tables, LISTEN, advisory locks).
const DefaultResetQuery = "DISCARD ALL"

// Config sets a Manager's limits. The zero value is usable: 80 server
// connections per server, no floor, no ceiling below the budget, a 30s
// queue timeout, a 10 min idle timeout and no lifetime limit.
type Config struct {
	// MaxServerConnections is the budget of each upstream server (host:port):
	// the server connections open or being opened to it, over all tenants.
	// Keep it below the server's max_connections. Zero or negative means 80.
	MaxServerConnections int
	// MinPerTenant is the floor: a tenant holding fewer connections on a
	// server is served before others when capacity frees. (With the budget
	// full, a tenant holding none may close another tenant's idle
	// connection to get one, and a tenant holding some may close one of a
	// tenant holding at least two more; never one of a tenant holding as
	// many or fewer.) It cannot take
	// connections that are in use. Zero means no floor; it is capped at
	// the ceiling.
	MinPerTenant int
	// MaxPerTenant is the ceiling: the most connections one tenant may hold
	// on a server, over all its routes there. Zero, negative or more than
	// the budget means the budget.
	MaxPerTenant int
	// QueueTimeout bounds how long Acquire waits for capacity. Zero or
	// negative means 30s.
	QueueTimeout time.Duration
	// IdleTimeout closes server connections idle that long, and removes a
	// pool that has had no connection for that long. Zero or negative
	// means 10 min.
	IdleTimeout time.Duration
	// MaxLifetime, when positive, closes server connections that old when
	// they are next released or found idle. Zero means no limit.
	MaxLifetime time.Duration
	// Turn is how long a server connection may go on serving its own
	// tenant's queued clients, one after the other, while other tenants
	// wait, or as long as a server login takes there lately if that is
	// longer; then it is given up for them. A turn amortizes a server login
	// (a few milliseconds) over the transactions queued behind it: with
	// more tenants than connections, handing every freed connection to the
	// next tenant instead would cost a login per transaction. Zero means
	// DefaultTurn; negative means no turn (freed capacity always goes round
	// the tenants with waiters).
	Turn time.Duration
	// OnWait, when set, is called with the time each queued Acquire waited
	// before it was served (not those that timed out or were cancelled),
	// on that Acquire's goroutine and outside any lock: the caller's wait
	// histogram. It must not block.
	OnWait func(time.Duration)
}

func (c *Config) maxServer() int {
	if c.MaxServerConnections <= 0 {
		return DefaultMaxServerConnections
	}
	return c.MaxServerConnections
}

func (c *Config) ceiling() int {
	if c.MaxPerTenant <= 0 || c.MaxPerTenant > c.maxServer() {
		return c.maxServer()
	}
	return c.MaxPerTenant
}

func (c *Config) floor() int {
	return max(0, min(c.MinPerTenant, c.ceiling()))
}

func (c *Config) queueTimeout() time.Duration {
	if c.QueueTimeout <= 0 {
		return DefaultQueueTimeout
	}
	return c.QueueTimeout
}

func (c *Config) turn() time.Duration {
	if c.Turn == 0 {
		return DefaultTurn
	}
	return c.Turn
}

func (c *Config) idleTimeout() time.Duration {
	if c.IdleTimeout <= 0 {
		return DefaultIdleTimeout
	}
	return c.IdleTimeout
}

// sweepEvery is the janitor's period: a quarter of the shortest timeout,
// so a connection outlives its timeout by at most a quarter of it.
func (c *Config) sweepEvery() time.Duration {
	d := c.idleTimeout()
	if c.MaxLifetime > 0 && c.MaxLifetime < d {
		d = c.MaxLifetime
	}
	return max(d/4, time.Millisecond)
}
