package daemon

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A live server whose accept queue is full (busy, or stalled) must not be taken for stale: only
// a refused connection proves a socket file is left over.
func TestLiveSocketWithFullBacklogIsNotReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // the live daemon, not accepting right now
		t.Fatal(err)
	}
	var queued []net.Conn
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			t.Logf("dial %d to the live socket: %v", i, err)
			break
		}
		queued = append(queued, c)
	}
	before, _ := os.Stat(path)
	lis, err := listen(path, 0o660, "")
	if err == nil {
		defer lis.Close()
		after, _ := os.Stat(path)
		t.Fatalf("listen replaced a live socket (queued conns %d; same inode after: %v)", len(queued), os.SameFile(before, after))
	}
	if !strings.Contains(err.Error(), "cannot be probed") {
		t.Fatalf("refusal: %v", err)
	}
}
