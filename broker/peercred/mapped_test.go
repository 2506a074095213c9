package peercred

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestDiagTCPUIDMappedClient: a client on an IPv6 socket that reached the IPv4 loopback listener
// through a v4-mapped address (::ffff:127.0.0.1) is found and named like a plain IPv4 one.
func TestDiagTCPUIDMappedClient(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skip("no IPv6 sockets here:", err)
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet6{Port: l.Addr().(*net.TCPAddr).Port}
	copy(sa.Addr[:], net.ParseIP("::ffff:127.0.0.1").To16())
	if err := syscall.Connect(fd, sa); err != nil {
		t.Skip("no v4-mapped connect here:", err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	uid, found, err := diagTCPUID(s.RemoteAddr().(*net.TCPAddr), s.LocalAddr().(*net.TCPAddr))
	if errors.Is(err, errNoDiag) {
		t.Skip("no sock_diag here:", err)
	}
	if err != nil || !found || uid != uint32(os.Geteuid()) {
		t.Fatalf("v4-mapped client: uid %d found %v err %v, want %d", uid, found, err, os.Geteuid())
	}
}
