package peercred

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"unsafe"
)

// The peer's supplementary groups are those it had when it connected (SO_PEERGROUPS), taken with
// its uid and gid: changing them afterwards changes nothing brokerd sees.
func TestReadReportsConnectTimeGroups(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	read := func(connect func() (net.Conn, error)) AuthInfo {
		t.Helper()
		c, err := connect()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		info, err := Read(s)
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	dial := func() (net.Conn, error) { return net.Dial("unix", path) }

	own, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if got := read(dial).Groups; !sameSet(got, own) {
		t.Fatalf("groups %v, want this process's %v", got, own)
	}

	if os.Geteuid() != 0 {
		t.Skip("needs root to connect with other supplementary groups (CI runs as root)")
	}
	// Connect from one OS thread whose groups are {4242, 4243} (a raw setgroups changes only that
	// thread; syscall.Setgroups would change them all), then restore them before anything else
	// runs on it.
	want := []int{4242, 4243}
	got := read(func() (net.Conn, error) {
		runtime.LockOSThread()
		if err := rawSetgroups(want); err != nil {
			runtime.UnlockOSThread()
			return nil, err
		}
		c, derr := net.Dial("unix", path)
		if err := rawSetgroups(own); err != nil {
			return nil, err // the thread stays locked and ends with this goroutine's test
		}
		runtime.UnlockOSThread()
		return c, derr
	}).Groups
	if !sameSet(got, want) {
		t.Fatalf("groups %v, want the connect-time %v", got, want)
	}
}

func rawSetgroups(gids []int) error {
	g := make([]uint32, len(gids)+1) // +1: a valid pointer even for none
	for i, v := range gids {
		g[i] = uint32(v)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(gids)), uintptr(unsafe.Pointer(&g[0])), 0); e != 0 {
		return e
	}
	return nil
}

func sameSet(got []uint32, want []int) bool {
	w := make([]uint32, len(want))
	for i, v := range want {
		w[i] = uint32(v)
	}
	g := slices.Clone(got)
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(slices.Compact(g), slices.Compact(w))
}
