package peercred

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The peer's uid of a loopback TCP connection is found in the kernel's table, on IPv4 and IPv6,
// by sock_diag and, where netlink is forbidden, by the /proc scan.
func TestLoopbackTCPUID(t *testing.T) {
	t.Run("sock_diag", testLoopbackTCPUID)
	t.Run("proc scan", func(t *testing.T) {
		was := diagBroken.Swap(true)
		defer diagBroken.Store(was)
		testLoopbackTCPUID(t)
	})
	// Neither lookup available (no AF_NETLINK, no /proc): said as such, not as a peer that left,
	// which callers log at debug only.
	t.Run("no table", func(t *testing.T) {
		was := diagBroken.Swap(true)
		defer diagBroken.Store(was)
		oldPaths := procNetTCP
		procNetTCP = []string{filepath.Join(t.TempDir(), "none")}
		defer func() { procNetTCP = oldPaths }()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Skipf("no IPv4 loopback: %v", err)
		}
		defer l.Close()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := LoopbackTCPUID(s); err == nil || errors.Is(err, ErrPeerGone) || !strings.Contains(err.Error(), "AF_NETLINK") {
			t.Fatalf("with no table to look in: %v, want an error naming the missing lookups", err)
		}
	})
}

func testLoopbackTCPUID(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v (no such loopback here)", addr, err)
			continue
		}
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		uid, err := LoopbackTCPUID(s)
		if err != nil || uid != uint32(os.Geteuid()) {
			t.Fatalf("%s: uid %d %v, want %d", addr, uid, err, os.Geteuid())
		}
		c.Close()
		s.Close()
		l.Close()
	}
}

func TestParseAddr(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the table below is as a little-endian kernel prints it")
	}
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80",
	} {
		a, err := parseAddr(in)
		if err != nil || a.String() != want {
			t.Errorf("parseAddr(%s) = %v %v, want %s", in, a, err, want)
		}
	}
	if _, err := parseAddr("zz:1"); err == nil {
		t.Error("bad address accepted")
	}
}

// TestDiagTCPUID: sock_diag finds the peer's established socket by its 4-tuple and names its
// owner; a socket that is gone, or in TIME_WAIT (whose uid field the kernel leaves 0), is not
// found.
func TestDiagTCPUID(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v (no such loopback here)", addr, err)
			continue
		}
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		peer, self := s.RemoteAddr().(*net.TCPAddr), s.LocalAddr().(*net.TCPAddr)
		uid, found, err := diagTCPUID(peer, self)
		if errors.Is(err, errNoDiag) {
			t.Skip("no sock_diag here:", err)
		}
		if err != nil || !found || uid != uint32(os.Geteuid()) {
			t.Fatalf("%s: uid %d found %v err %v, want %d", addr, uid, found, err, os.Geteuid())
		}
		// The client closes first: its side goes to TIME_WAIT once the server closes too.
		c.Close()
		s.Close()
		l.Close()
		if _, found, err := diagTCPUID(peer, self); err != nil || found {
			t.Fatalf("%s after close: found %v err %v, want not found", addr, found, err)
		}
		other := *peer
		other.Port = 1
		if _, found, err := diagTCPUID(&other, self); err != nil || found {
			t.Fatalf("%s: a port nobody uses: found %v err %v, want not found", addr, found, err)
		}
	}
}
