package attest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/broker/peercred"
)

func TestParseUnitAndGroups(t *testing.T) {
	for in, want := range map[string]string{
		"0::/system.slice/scavio-mcp.service\n":                                    "scavio-mcp.service",
		"0::/system.slice/scavio-mcp.service/worker\n":                             "scavio-mcp.service",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/mcp.service\n": "user@1000.service:mcp.service",
		"0::/user.slice/user-1000.slice/user@1000.service/init.scope\n":            "user@1000.service:init.scope",
		"0::/user.slice/user-1000.slice/user@1000.service/x/y\n":                   "user@1000.service",
		"0::/user.slice/user-1000.slice/session-2.scope\n":                         "session-2.scope",
		"0::/\n":                             "",
		"0::/init.scope\n":                   "init.scope",
		"0::/machine/x.scope\n":              "",
		"0::/../../system.slice/x.service\n": "",
		"12:pids:/system.slice/x.service\n0::/user.slice/user-1000.slice/x.service/sub\n": "x.service",
		// A delegated subtree's cgroups are named by its processes: never a unit.
		"0::/system.slice/docker.service/scavio-mcp.service\n":                            "docker.service",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/scavio-mcp.service\n": "user@1000.service:scavio-mcp.service",
	} {
		if got := parseUnit([]byte(in)); got != want {
			t.Errorf("parseUnit(%q) = %q, want %q", in, got, want)
		}
	}
	got := parseGroups([]byte("Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 1000 \nNgid:\t0\n"))
	if len(got) != 3 || got[0] != 4 || got[2] != 1000 {
		t.Errorf("parseGroups = %v", got)
	}
}

// TestPinRefusesAnotherStartTime: a pid whose start time is not the one vouched for at accept
// (the pid was reused) is never pinned.
func TestPinRefusesAnotherStartTime(t *testing.T) {
	p, err := Pin(int32(os.Getpid()), 1, 0)
	if err == nil {
		p.Close()
		t.Fatal("pinned a process with the wrong start time")
	}
	if _, err := Pin(int32(os.Getpid()), 0, 0); !errors.Is(err, ErrUnidentified) {
		t.Fatalf("no start time: %v", err)
	}
}

// TestWatchSeesExit: Watch fires when the pinned process exits, and not before; a stopped watch
// never fires.
func TestWatchSeesExit(t *testing.T) {
	start := func() (*exec.Cmd, *Pinned) {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Skip("no sleep binary:", err)
		}
		st, err := peercred.StartTime(int32(cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		p, err := Pin(int32(cmd.Process.Pid), st, 0)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, p
	}
	cmd, p := start()
	exited := make(chan struct{})
	if _, err := p.Watch(make(chan struct{}), func() { close(exited) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Fatal("watch fired while the process lives")
	default:
	}
	cmd.Process.Kill()
	<-exited // the test's own timeout bounds this
	cmd.Wait()

	cmd, p = start()
	stop := make(chan struct{})
	fired := make(chan struct{}, 1)
	closed, err := p.Watch(stop, func() { fired <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-closed // the stopped watch's pidfd is closed
	cmd.Process.Kill()
	cmd.Wait()
	// The stopped watch's pidfd is closed and nothing else holds it; a fired callback would
	// already have been sent by the time a second, live watch on another process fires.
	cmd2, p2 := start()
	done := make(chan struct{})
	p2.Watch(make(chan struct{}), func() { close(done) })
	cmd2.Process.Kill()
	<-done
	cmd2.Wait()
	select {
	case <-fired:
		t.Fatal("a stopped watch fired")
	default:
	}
}

// TestPinByPidfdInode: on pidfs (Linux 6.9+) the pidfd's inode names the process, with no /proc
// read: the same process pins, another inode does not.
func TestPinByPidfdInode(t *testing.T) {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip("no pidfd_open:", err)
	}
	ino := peercred.PidfdInode(fd)
	unix.Close(fd)
	if ino == 0 {
		t.Skip("pidfds are not on pidfs here (Linux < 6.9)")
	}
	p, err := Pin(int32(os.Getpid()), 0, ino)
	if err != nil {
		t.Fatalf("same process: %v", err)
	}
	p.Close()
	if p, err := Pin(int32(os.Getpid()), 0, ino+1); err == nil {
		p.Close()
		t.Fatal("pinned with another process's inode")
	}
}

// TestInspectTakesTheKernelsGroups: the supplementary groups the kernel recorded at connect
// (SO_PEERGROUPS) are what attestation matches on; /proc/PID/status, which the shipped unit's
// ProtectProc=invisible hides for other users' processes, is read only when the kernel gave none.
func TestInspectTakesTheKernelsGroups(t *testing.T) {
	st, err := peercred.StartTime(int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Pin(int32(os.Getpid()), st, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// 4242424 is in no one's /proc status here: seeing it proves the kernel's list was used.
	got, err := p.InspectContext(context.Background(), uint32(os.Getuid()), uint32(os.Getgid()), []uint32{4242424})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Groups) != 1 || got.Groups[0] != 4242424 {
		t.Fatalf("groups %v, want the kernel's [4242424]", got.Groups)
	}
	if got, err := p.InspectContext(context.Background(), uint32(os.Getuid()), uint32(os.Getgid()), []uint32{}); err != nil || len(got.Groups) != 0 {
		t.Fatalf("no supplementary groups per the kernel: %v, %v", got.Groups, err)
	}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	got, err = p.InspectContext(context.Background(), uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Groups) != len(want) {
		t.Fatalf("without the kernel's list: groups %v from /proc, want %v", got.Groups, want)
	}
}
