package connlimit

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type refusal struct {
	peer   Peer
	reason string
}

// server accepts on a Unix socket through a Listener with cfg and hands accepted conns to a
// channel; refusals go to another.
func server(t *testing.T, cfg Config) (*Listener, string, <-chan net.Conn, <-chan refusal) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	raw, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l, accepted, refused := serve(t, raw, cfg)
	return l, sock, accepted, refused
}

// serve accepts on raw through a Listener with cfg, as server does for any kind of listener.
func serve(t *testing.T, raw net.Listener, cfg Config) (*Listener, <-chan net.Conn, <-chan refusal) {
	t.Helper()
	refused := make(chan refusal, 100)
	cfg.OnRefuse = func(p Peer, reason string) { refused <- refusal{p, reason} }
	l := New(raw, cfg)
	accepted := make(chan net.Conn, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l, accepted, refused
}

func dial(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closed c (a read sees EOF), waiting at most 10s.
func closedByServer(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF)
}

func TestPerUIDCapAdminReserveAndRelease(t *testing.T) {
	var admin atomic.Bool
	l, sock, accepted, refused := server(t, Config{PerUID: 3, Total: 8, Reserve: 2, IsAdmin: func(uid, gid uint32, _ []uint32) bool { return admin.Load() }})
	var mine []net.Conn
	for range 3 {
		dial(t, sock)
		mine = append(mine, <-accepted)
	}
	over := dial(t, sock)
	r := <-refused
	if r.reason != ReasonPerUID || !r.peer.Known || r.peer.UID != uint32(os.Getuid()) || r.peer.PID != int32(os.Getpid()) {
		t.Fatalf("refusal %+v, want %s from this process", r, ReasonPerUID)
	}
	if !closedByServer(t, over) {
		t.Fatal("connection over the per-uid cap was not closed")
	}
	// An admin is not held to the per-uid cap, and gets the reserve: 5 more fill the total of 8.
	admin.Store(true)
	for range 5 {
		dial(t, sock)
		<-accepted
	}
	if n := l.Open(); n != 8 {
		t.Fatalf("%d open, want 8", n)
	}
	dial(t, sock)
	if r := <-refused; r.reason != ReasonTotal {
		t.Fatalf("admin over the total: %+v", r)
	}
	// Closing one (twice: counted once) frees one place.
	mine[0].Close()
	mine[0].Close()
	admin.Store(false)
	dial(t, sock)
	<-accepted
	if n := l.Open(); n != 8 {
		t.Fatalf("%d open after close and re-open, want 8", n)
	}
}

// Non-admins together cannot take the admins' reserve.
func TestNonAdminsLeaveTheReserve(t *testing.T) {
	var admin atomic.Bool
	_, sock, accepted, refused := server(t, Config{PerUID: 100, Total: 6, Reserve: 2, IsAdmin: func(uint32, uint32, []uint32) bool { return admin.Load() }})
	for range 4 {
		dial(t, sock)
		<-accepted
	}
	dial(t, sock)
	if r := <-refused; r.reason != ReasonTotal {
		t.Fatalf("non-admin into the reserve: %+v", r)
	}
	admin.Store(true)
	for range 2 {
		dial(t, sock)
		select {
		case <-accepted:
		case r := <-refused:
			t.Fatalf("admin refused from its reserve: %+v", r)
		}
	}
}

// TestAdminBySupplementaryGroup: a peer that is an admin only through a supplementary group (an
// --admin-gid it is a member of) gets the admin reserve, as the admin API would let it in: the
// listener reads SO_PEERGROUPS when uid and gid alone do not decide.
func TestAdminBySupplementaryGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give this process a supplementary group (setgroups)")
	}
	const adminGID = 4242424
	_, sock, accepted, refused := server(t, Config{PerUID: 1, Total: 8, Reserve: 2, IsAdmin: func(uid, gid uint32, groups []uint32) bool {
		return slices.Contains(groups, adminGID)
	}})
	// Not an admin: the per-uid cap of 1 applies.
	dial(t, sock)
	<-accepted
	if !closedByServer(t, dial(t, sock)) {
		t.Fatal("a second non-admin connection was accepted over the per-uid cap of 1")
	}
	if r := <-refused; r.reason != ReasonPerUID {
		t.Fatalf("refused for %q", r.reason)
	}
	// The same uid with the admin group among its supplementary groups: past the cap.
	orig, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgroups([]int{adminGID}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if rerr := syscall.Setgroups(orig); rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-accepted:
	case r := <-refused:
		t.Fatalf("a supplementary-group admin was refused (%s)", r.reason)
	}
}

// dialTCPAs connects to addr from a socket created with effective (and so file-system) uid uid,
// which the kernel's socket table then names as its owner, as it would a process of that user.
// Only the calling OS thread changes uid (a raw setresuid, not syscall.Setuid, which changes every
// thread), and only while it creates the socket.
func dialTCPAs(t *testing.T, addr *net.TCPAddr, uid int) net.Conn {
	t.Helper()
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			done <- result{-1, e}
			return
		}
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// Leave the thread locked: it ends with this goroutine instead of running others as uid.
			done <- result{-1, e}
			return
		}
		runtime.UnlockOSThread()
		done <- result{fd, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("socket as uid %d: %v", uid, r.err)
	}
	sa := &syscall.SockaddrInet4{Port: addr.Port}
	copy(sa.Addr[:], addr.IP.To4())
	if err := syscall.Connect(r.fd, sa); err != nil {
		syscall.Close(r.fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(r.fd), "tcp")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLoopbackTCPPeersCountedPerUID: on a loopback TCP listener (the HTTP front's, which any local
// user can reach) each connection counts against its own uid, as the kernel's socket table names
// it: one user who holds its per-uid share of connections does not lock every other user out, and
// the refusal names that user.
func TestLoopbackTCPPeersCountedPerUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as uid 65534 (CI runs as root)")
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip("no IPv4 loopback here:", err)
	}
	_, accepted, refused := serve(t, raw, Config{PerUID: 2, Total: 16, Reserve: 4, IsAdmin: func(uint32, uint32, []uint32) bool { return false }})
	addr := raw.Addr().(*net.TCPAddr)

	const nobody = 65534
	for range 2 {
		dialTCPAs(t, addr, nobody)
		select {
		case c := <-accepted:
			t.Cleanup(func() { c.Close() })
		case r := <-refused:
			t.Fatalf("uid %d refused within its share: %+v", nobody, r)
		}
	}
	over := dialTCPAs(t, addr, nobody)
	r := <-refused
	if r.reason != ReasonPerUID || !r.peer.Known || r.peer.UID != nobody {
		t.Fatalf("refusal %+v, want %s naming uid %d", r, ReasonPerUID, nobody)
	}
	if !closedByServer(t, over) {
		t.Fatal("connection over the per-uid cap was not closed")
	}
	// Another user (root here) still gets in: uid 65534's connections are not its.
	dialTCPAs(t, addr, 0)
	select {
	case c := <-accepted:
		c.Close()
	case r := <-refused:
		t.Fatalf("uid 0 refused because uid %d holds its share: %+v", nobody, r)
	}
}

// pacedListener accepts only when the test says so, so that a client can do something to its
// connection (half-close it) before the Listener looks its peer up.
type pacedListener struct {
	net.Listener
	next chan struct{}
}

func (l *pacedListener) Accept() (net.Conn, error) {
	<-l.next
	return l.Listener.Accept()
}

// TestUnknownTCPPeersCountedApart: a loopback TCP peer whose uid the kernel's socket table does not
// name (it half-closed before brokerd accepted it, so its socket is no longer ESTABLISHED — which
// any local user can do on purpose) is counted in a share of its own, not as uid 0: unknown peers
// cannot lock root out, and root's connections do not use up theirs.
func TestUnknownTCPPeersCountedApart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, for connections that are uid 0's (CI runs as root)")
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip("no IPv4 loopback here:", err)
	}
	paced := &pacedListener{Listener: raw, next: make(chan struct{})}
	_, accepted, refused := serve(t, paced, Config{PerUID: 2, Total: 16, Reserve: 4, IsAdmin: func(uint32, uint32, []uint32) bool { return false }})
	// After serve's, so it runs first: the accept loop must get past the gate to see the close.
	t.Cleanup(func() { close(paced.next) })
	addr := raw.Addr().(*net.TCPAddr)
	// connect dials as uid (or, unknown, half-closes first), lets the Listener accept one
	// connection, and returns what it made of it.
	connect := func(uid int, unknown bool) (Peer, string) {
		t.Helper()
		c := dialTCPAs(t, addr, uid)
		if unknown {
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
		paced.next <- struct{}{}
		select {
		case a := <-accepted:
			t.Cleanup(func() { a.Close() })
			return a.(*conn).peer, ""
		case r := <-refused:
			return r.peer, r.reason
		}
	}
	// The first two connections of a share get in, the third is over the cap of 2.
	wantRefusal := func(i int) string {
		if i < 2 {
			return ""
		}
		return ReasonPerUID
	}
	for i := range 3 {
		p, reason := connect(65534, true)
		if p.Known {
			t.Fatalf("half-closed peer %d was named uid %d; the test needs one the socket table does not list", i, p.UID)
		}
		if want := wantRefusal(i); reason != want {
			t.Fatalf("unknown peer %d: refused %q, want %q (unknown peers share a cap of 2 of their own)", i, reason, want)
		}
	}
	for i := range 3 {
		p, reason := connect(0, false)
		if !p.Known || p.UID != 0 {
			t.Fatalf("uid 0's connection named %+v", p)
		}
		if want := wantRefusal(i); reason != want {
			t.Fatalf("uid 0's connection %d: refused %q, want %q: the unknown peers' connections were counted as root's", i, reason, want)
		}
	}
}
