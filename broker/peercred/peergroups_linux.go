package peercred

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerGroups returns the supplementary groups of the peer of the socket fd (SO_PEERGROUPS, Linux
// 4.13+). The kernel takes them from the same credentials as SO_PEERCRED, recorded when the peer
// connected: they belong to the connecting process at connect time, not to whatever holds the pid
// now, so no pidfd or /proc read is needed to pin them (and brokerd, under the shipped unit's
// ProtectProc=invisible, could not read other users' /proc/PID/status anyway). Groups the reader's
// user namespace does not map come back as the overflow gid (65534).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case errno == unix.ERANGE && int(n) > len(buf)*4:
			// n is now the size the kernel needs (up to NGROUPS_MAX, 65536 groups).
			buf = make([]uint32, n/4)
		case errno != 0:
			return nil, errno
		default:
			return buf[:n/4], nil
		}
	}
}
