package peercred

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReadReportsOwnIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan AuthInfo, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
			close(done)
			return
		}
		_, info, err := TransportCredentials().ServerHandshake(c)
		if err != nil {
			t.Error(err)
		}
		c.Close()
		ai, _ := info.(AuthInfo)
		done <- ai
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := <-done
	if got.UID != uint32(os.Getuid()) || got.GID != uint32(os.Getgid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("got uid=%d gid=%d pid=%d, want %d %d %d", got.UID, got.GID, got.PID, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

func TestReadRefusesTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			defer c.Close()
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := TransportCredentials().ServerHandshake(c); err == nil {
		t.Fatal("TCP connection accepted")
	}
}

// selfConnection connects this process to a Unix socket of its own and returns what the server
// side of the handshake learned about it.
func selfConnection(t *testing.T) AuthInfo {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return acceptOne(t, l)
}

// acceptOne returns the server-side AuthInfo of the next connection on l.
func acceptOne(t *testing.T, l net.Listener) AuthInfo {
	t.Helper()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, info, err := TransportCredentials().ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	return info.(AuthInfo)
}

func TestPidfdNamesTheCallingProgram(t *testing.T) {
	if _, err := os.Stat("/proc/self/fdinfo"); err != nil {
		t.Skip("no /proc here")
	}
	got := selfConnection(t)
	if !PidfdSupported() {
		// SO_PEERPIDFD arrived in Linux 6.5; older kernels must still work, without a program name.
		if got.PIDFD || got.Exe != "" || got.Comm != "" {
			t.Fatalf("no pidfd support, yet pidfd=%v exe=%q comm=%q", got.PIDFD, got.Exe, got.Comm)
		}
		t.Skip("kernel has no SO_PEERPIDFD; the fallback is covered by TestNoPidfdFallsBackToPeerCred")
	}
	if !got.PIDFD {
		t.Fatal("kernel has SO_PEERPIDFD but the connection's identity was not pinned with it")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if got.Exe != self {
		t.Errorf("exe = %q, want %q", got.Exe, self)
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	if want := strings.TrimSpace(string(comm)); got.Comm != want {
		t.Errorf("comm = %q, want %q", got.Comm, want)
	}
}

func TestNoPidfdFallsBackToPeerCred(t *testing.T) {
	old := peerPidfd
	peerPidfd = func(int) (int, error) { return -1, unix.ENOPROTOOPT }
	defer func() { peerPidfd = old }()
	got := selfConnection(t)
	if got.UID != uint32(os.Getuid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("uid=%d pid=%d, want %d %d", got.UID, got.PID, os.Getuid(), os.Getpid())
	}
	if got.PIDFD || got.Exe != "" || got.Comm != "" {
		t.Fatalf("without a pidfd: pidfd=%v exe=%q comm=%q, want nothing vouched for", got.PIDFD, got.Exe, got.Comm)
	}
}

// TestExitedPeerIsNotNamed: a peer that connected and exited before brokerd accepted keeps its
// uid (the kernel recorded it at connect), but its pid may already belong to someone else, so no
// program is named for it.
func TestExitedPeerIsNotNamed(t *testing.T) {
	if os.Getenv("PEERCRED_DIAL") != "" {
		c, err := net.Dial("unix", os.Getenv("PEERCRED_DIAL"))
		if err != nil {
			os.Exit(3)
		}
		c.Write([]byte{1})
		os.Exit(0) // exit with the connection still queued, never accepted
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestExitedPeerIsNotNamed$")
	cmd.Env = append(os.Environ(), "PEERCRED_DIAL="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dialer: %v\n%s", err, out)
	}
	got := acceptOne(t, l) // the child has exited and been reaped
	if got.PID != int32(cmd.Process.Pid) || got.UID != uint32(os.Getuid()) {
		t.Fatalf("pid=%d uid=%d, want %d %d", got.PID, got.UID, cmd.Process.Pid, os.Getuid())
	}
	if got.PIDFD || got.Exe != "" || got.Comm != "" {
		t.Fatalf("exited peer named: pidfd=%v exe=%q comm=%q", got.PIDFD, got.Exe, got.Comm)
	}
}
