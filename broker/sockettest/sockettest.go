// Package sockettest makes Unix sockets in the states tests need.
package sockettest

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// FullQueue listens on a new Unix socket with an accept queue of one and fills it, as a local
// user connecting and closing in a loop leaves brokerd's: until lis accepts, a connect to path
// fails at once with EAGAIN. fillers are the connections that fill it; the caller closes them
// when it is done (a server that accepts them waits out their handshake otherwise), and they,
// lis and the socket's directory are closed and removed at cleanup in any case. t is skipped if
// the queue never fills.
func FullQueue(t testing.TB) (path string, lis net.Listener, fillers []net.Conn) {
	t.Helper()
	dir, err := os.MkdirTemp("", "cbq-") // short: a socket path has 108 bytes at most
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path = filepath.Join(dir, "b.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // a queue of one, not accepted yet
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	lis, err = net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lis.Close()
		for _, c := range fillers {
			c.Close()
		}
	})
	for {
		c, err := net.Dial("unix", path)
		if errors.Is(err, syscall.EAGAIN) {
			return path, lis, fillers
		}
		if err != nil {
			t.Fatal(err)
		}
		if fillers = append(fillers, c); len(fillers) > 16 {
			t.Skip("the accept queue never filled")
		}
	}
}
