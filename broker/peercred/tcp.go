package peercred

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// ErrNotLoopback reports a connection whose peer is not on this host's loopback.
var ErrNotLoopback = errors.New("not a loopback TCP connection")

// ErrPeerGone reports a loopback peer whose socket has no established entry in the kernel's
// table: it closed (or reset) its end, as any client may, often before brokerd accepted it.
var ErrPeerGone = errors.New("the peer's socket is no longer established in the kernel's socket table")

// procNetTCP are the kernel's socket tables for brokerd's network namespace. A peer that reached a
// loopback listener is in the same namespace, so its socket is listed there. Through /proc/self,
// not the /proc/net link: the shipped unit's ProcSubset=pid mounts a /proc without /proc/net,
// where every loopback peer would stay unnamed (uid-bound tokens refused to all, and every TCP
// client of the HTTP front counted as one uid, so one user's connections locked out the rest).
var procNetTCP = []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"}

// errNoDiag reports that sock_diag cannot be asked here (a seccomp filter or
// RestrictAddressFamilies= without AF_NETLINK): the caller falls back to the /proc table.
var errNoDiag = errors.New("sock_diag unavailable")

// LoopbackTCPUID returns the uid owning the peer's end of a loopback TCP connection, from the
// kernel's socket table: the entry whose local address is conn's remote address and whose remote
// address is conn's local address, looked up by sock_diag (diagTCPUID), else found in
// /proc/self/net/tcp{,6}. The uid is the socket's creator's, recorded by the kernel, as
// SO_PEERCRED records the connector's; gid and pid are not in the table.
func LoopbackTCPUID(conn net.Conn) (uint32, error) {
	if w, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = w.NetConn()
	}
	local, ok1 := conn.LocalAddr().(*net.TCPAddr)
	remote, ok2 := conn.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 || !remote.IP.IsLoopback() {
		return 0, ErrNotLoopback
	}
	uid, found, err := diagTCPUID(remote, local)
	switch {
	case err == nil && found:
		return uid, nil
	case err == nil:
		return 0, fmt.Errorf("%w: %s", ErrPeerGone, remote)
	case !errors.Is(err, errNoDiag):
		return 0, err
	}
	// No sock_diag here (a seccomp filter, RestrictAddressFamilies= without AF_NETLINK): scan the
	// table, at a cost that grows with every socket on the machine.
	read := false
	for _, path := range procNetTCP {
		uid, found, err := findUID(path, remote, local)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		if found {
			return uid, nil
		}
		read = read || err == nil
	}
	if !read {
		// Not a peer that left: no table to look in (no sock_diag and no /proc/self/net), so no
		// TCP peer is ever named. Said as such, so that the operator hears of it.
		return 0, fmt.Errorf("neither sock_diag nor %s is available to name loopback TCP peers: allow AF_NETLINK or mount /proc", strings.Join(procNetTCP, ", "))
	}
	return 0, fmt.Errorf("%w: %s", ErrPeerGone, remote)
}

// findUID scans one table for an established socket from local to remote.
func findUID(path string, local, remote *net.TCPAddr) (uint32, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[3] != "01" { // 01: ESTABLISHED
			continue
		}
		l, err1 := parseAddr(fields[1])
		r, err2 := parseAddr(fields[2])
		if err1 != nil || err2 != nil || !sameAddr(l, local) || !sameAddr(r, remote) {
			continue
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("%s: bad uid %q", path, fields[7])
		}
		return uint32(uid), true, nil
	}
	return 0, false, sc.Err()
}

func sameAddr(a, b *net.TCPAddr) bool { return a.Port == b.Port && a.IP.Equal(b.IP) }

// parseAddr reads the kernel's "ADDR:PORT": the address as 32-bit words printed in host byte order
// (one for IPv4, four for IPv6), the port in hex.
func parseAddr(s string) (*net.TCPAddr, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || (len(h) != 8 && len(h) != 32) {
		return nil, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return nil, err
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return nil, err
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}
