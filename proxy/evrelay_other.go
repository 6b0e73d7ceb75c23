//go:build !linux

package proxy

import (
	"context"
	"net"
	"time"
)

// Elsewhere than on Linux every session relays on goroutines (relay); these
// stand in for the event relay of evrelay_linux.go.

type poller struct{}

func newPoller(*Server, context.Context) (*poller, error) { return nil, nil }

func (p *poller) close() {}

type evRelay struct{ p *poller }

func canEventRelay(*poller, ...net.Conn) bool { return false }

func (ev *evRelay) init(*poller, *liveSession, net.Conn, net.Conn) {}

func (ev *evRelay) start(time.Time, uint64) {}

func (ev *evRelay) initPooled(*poller, *liveSession, *pooledClient) {}

func (ev *evRelay) wakeOut() {}

func (ev *evRelay) wakeIn() {}

func (ev *evRelay) closeUpstream() {}

func (ev *evRelay) abort() {}
