package main

// Connection hygiene (docs/security.md), as the Python front end configures gRPC core: at most -max-connections
// open client connections (one more is closed on arrival), a handshake deadline, idle and age limits with a
// grace for calls in flight, keepalive pings, and a floor on how often a client may ping. Go raises its own soft
// open-file limit to the hard one at start (since Go 1.19), so idle connections do not run out of descriptors.

import (
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

type connLimits struct {
	max                         int
	idle, age, grace, handshake time.Duration
	keepalive                   time.Duration
}

const (
	keepaliveTimeout = 20 * time.Second
	minClientPing    = 5 * time.Minute // gRPC's default, stated: clients pinging more often without calls get GOAWAY
)

func (c connLimits) serverOptions() []grpc.ServerOption {
	params := keepalive.ServerParameters{MaxConnectionIdle: c.idle, Time: c.keepalive, Timeout: keepaliveTimeout}
	if c.age > 0 {
		params.MaxConnectionAge, params.MaxConnectionAgeGrace = c.age, c.grace
	}
	return []grpc.ServerOption{
		grpc.KeepaliveParams(params),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minClientPing}),
		grpc.ConnectionTimeout(c.handshake),
	}
}

// limitListener closes a connection on arrival while `max` are open.
type limitListener struct {
	net.Listener
	mu   sync.Mutex
	open int
	max  int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		full := l.open >= l.max
		if !full {
			l.open++
		}
		l.mu.Unlock()
		if full {
			conn.Close()
			continue
		}
		return &countedConn{Conn: conn, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
