package peercred

import (
	"bytes"
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// peerPidfd returns a pidfd for the peer of the socket fd (SO_PEERPIDFD, Linux 6.5+), or an
// error when the kernel has none. It is a variable so tests can play an old kernel.
var peerPidfd = func(fd int) (int, error) {
	return unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
}

// errExited reports a peer that exited before brokerd looked at it.
var errExited = errors.New("peer process has exited")

// identify reads what /proc says about the process behind pidfd. The pid in /proc/PID may be
// reused once the peer has exited and been reaped, so the order matters: resolve the pid through
// the pidfd, read /proc/PID, then check through the pidfd that the process has still not been
// reaped (fdinfo says -1 from then on). If so, nothing else can hold that pid yet and what was read
// belongs to the caller. (A zombie still holds its pid: its comm is kept, its exe is unreadable.)
// The peer may exec between the two reads, so exe and comm can straddle an exec of the same
// process; they never belong to another process.
//
// The check reads fdinfo rather than sending signal 0 through the pidfd: that needs permission to
// signal the peer, which brokerd (another uid, no CAP_KILL) lacks for most callers.
func identify(pidfd int) (process, error) {
	pid, err := PidfdPID(pidfd)
	if err != nil {
		return process{}, err
	}
	p := process{pid: pid, ino: PidfdInode(pidfd)}
	dir := "/proc/" + strconv.Itoa(int(pid))
	if exe, err := os.Readlink(dir + "/exe"); err == nil {
		p.exe = exe
	}
	if comm, err := os.ReadFile(dir + "/comm"); err == nil {
		p.comm = string(bytes.TrimSpace(comm))
	}
	if start, err := StartTime(pid); err == nil {
		p.start = start
	}
	if again, err := PidfdPID(pidfd); err != nil || again != pid {
		return process{pid: pid}, errExited
	}
	return p, nil
}

// PidfdPID returns the pid a pidfd refers to, from the "Pid:" line of its fdinfo: -1 once the
// process has been reaped, 0 when it is outside the pid namespace of the /proc brokerd reads
// (the same /proc the other reads use, so the numbers agree).
func PidfdPID(pidfd int) (int32, error) {
	raw, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(pidfd))
	if err != nil {
		return 0, err
	}
	for line := range bytes.SplitSeq(raw, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("Pid:"))
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 32)
		if err != nil {
			return 0, err
		}
		if n <= 0 {
			return 0, errExited
		}
		return int32(n), nil
	}
	return 0, errors.New("pidfd fdinfo has no Pid line")
}

// PidfdSupported reports whether this kernel hands out peer pidfds (SO_PEERPIDFD), so callers'
// programs can be named; brokerd logs it at start.
func PidfdSupported() bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	pidfd, err := peerPidfd(fds[0])
	if err != nil {
		return false
	}
	unix.Close(pidfd)
	return true
}
