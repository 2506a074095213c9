// Package connlimit bounds the connections brokerd holds open: a net.Listener wrapper that reads
// the peer's uid (SO_PEERCRED) at accept and closes a connection at once when its uid already has
// its share open, or when brokerd as a whole has. Admin uids have no per-uid cap and a reserve of
// the total that other uids cannot use, so a socket-group user who opens connections until
// something gives cannot keep an operator out. It decides and counts; what a refusal means for
// the audit log is its caller's business (Config.OnRefuse).
package connlimit

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/credbroker/credbroker/broker/peercred"
)

// Reasons given to OnRefuse.
const (
	ReasonPerUID = "conn-limit-uid"   // the uid has PerUID connections open
	ReasonTotal  = "conn-limit-total" // brokerd has Total connections open (Total-Reserve for non-admins)
)

// Config sets the caps.
type Config struct {
	// PerUID caps the open connections of each non-admin uid, and those of the peers whose uid
	// the kernel did not name (Peer.Known false), which share one count of their own.
	PerUID int
	// Total caps all open connections; the last Reserve of them only admins may use.
	Total, Reserve int
	// IsAdmin reports whether a peer with this uid, gid and supplementary groups (nil when the
	// kernel could not say) is an admin (grpcapi.Admins).
	IsAdmin func(uid, gid uint32, groups []uint32) bool
	// OnRefuse is told of each refused connection; it runs in the accept loop, so it must not
	// block for long (broker.Broker.RecordRefusal writes at most once per uid and reason per
	// interval).
	OnRefuse func(peer Peer, reason string)
	// OnChange, if set, is given the number of open connections after each change (a metric).
	OnChange func(open int)
}

// Peer is who opened a connection, as SO_PEERCRED reported it, or on loopback TCP the uid the
// kernel's socket table names (GID and PID 0). Known is false when the kernel named nobody.
type Peer struct {
	UID, GID uint32
	PID      int32
	Known    bool
}

// DefaultReserve is the reserve for admins out of total connections: 1/16th, at least 4 and at
// most 64.
func DefaultReserve(total int) int { return min(64, max(4, total/16)) }

// Listener is a net.Listener that enforces Config.
type Listener struct {
	net.Listener
	cfg Config

	mu       sync.Mutex
	total    int            // open connections
	nonAdmin int            // of which from non-admin uids
	perUID   map[uint32]int // of which from each uid the kernel named
	unknown  int            // of which from peers the kernel named nobody for
}

// New wraps lis.
func New(lis net.Listener, cfg Config) *Listener {
	return &Listener{Listener: lis, cfg: cfg, perUID: make(map[uint32]int)}
}

// Accept returns the next connection within the caps; connections over them are closed and
// reported, never returned, so gRPC's accept loop sees no error for them.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var (
			p      Peer
			groups []uint32
		)
		onUnix := false
		if u, ok := c.(*net.UnixConn); ok {
			if uid, gid, pid, err := peercred.Ucred(u); err == nil {
				p = Peer{UID: uid, GID: gid, PID: pid, Known: true}
				groups, _ = peercred.Groups(u) // nil on a kernel without SO_PEERGROUPS
				onUnix = true
			}
		} else if uid, err := peercred.LoopbackTCPUID(c); err == nil {
			// Loopback TCP (the HTTP front), which every local user can reach: count the
			// connection against the uid owning the peer's socket, as the front itself
			// identifies it. Unnamed, every TCP peer would share one count, and one user holding
			// PerUID connections would lock every other user out.
			p = Peer{UID: uid, Known: true}
		}
		// A peer the kernel did not name is treated as a non-admin: it gets a non-admin's share,
		// counted apart from every uid's (admit). On loopback TCP that is a peer whose socket is
		// no longer ESTABLISHED when it is looked up: it closed, or half-closed after sending its
		// request, before brokerd accepted it, which any local user can do on purpose.
		// So is a TCP peer: its gid and groups are not in the socket table (GID stays 0, which
		// must not match an --admin-gid), and the admin API is not served over TCP anyway.
		admin := onUnix && l.cfg.IsAdmin != nil && l.cfg.IsAdmin(p.UID, p.GID, groups)
		if reason := l.admit(p, admin); reason != "" {
			c.Close()
			if l.cfg.OnRefuse != nil {
				l.cfg.OnRefuse(p, reason)
			}
			continue
		}
		return &conn{Conn: c, l: l, peer: p, admin: admin}, nil
	}
}

// admit counts a new connection in, or returns why it may not be.
func (l *Listener) admit(p Peer, admin bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.cfg.Total:
		return ReasonTotal
	case admin:
	case l.nonAdmin >= l.cfg.Total-l.cfg.Reserve:
		return ReasonTotal
	case !p.Known:
		// Unknown peers share one count of their own. Counted as uid 0 (the zero Peer) they
		// would share root's: a user who can make its connections unknown (see Accept) could
		// lock root's loopback TCP clients out, and evade its own uid's cap.
		if l.unknown >= l.cfg.PerUID {
			return ReasonPerUID
		}
		l.nonAdmin++
		l.unknown++
	case l.perUID[p.UID] >= l.cfg.PerUID:
		return ReasonPerUID
	default:
		l.nonAdmin++
		l.perUID[p.UID]++
	}
	l.total++
	l.changed()
	return ""
}

func (l *Listener) release(p Peer, admin bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	switch {
	case admin:
	case !p.Known:
		l.nonAdmin--
		l.unknown--
	default:
		l.nonAdmin--
		if l.perUID[p.UID]--; l.perUID[p.UID] == 0 {
			delete(l.perUID, p.UID)
		}
	}
	l.changed()
}

func (l *Listener) changed() {
	if l.cfg.OnChange != nil {
		l.cfg.OnChange(l.total)
	}
}

// Open returns the number of open connections.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// conn releases its place once, on the first Close.
type conn struct {
	net.Conn
	l      *Listener
	peer   Peer
	admin  bool
	closed atomic.Bool
}

func (c *conn) Close() error {
	if !c.closed.Swap(true) {
		c.l.release(c.peer, c.admin)
	}
	return c.Conn.Close()
}

// NetConn returns the accepted connection, so peercred can read its credentials.
func (c *conn) NetConn() net.Conn { return c.Conn }

// Peer returns who the listener found opened the connection, so a server need not look again (a
// loopback TCP peer's uid costs a scan of the kernel's socket table).
func (c *conn) Peer() Peer { return c.peer }
