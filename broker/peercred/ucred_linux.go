package peercred

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Ucred returns SO_PEERCRED alone: uid, gid and pid, without naming the program (one getsockopt,
// cheap enough for every accept).
func Ucred(uc *net.UnixConn) (uid, gid uint32, pid int32, err error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred    *unix.Ucred
		credErr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return 0, 0, 0, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	return cred.Uid, cred.Gid, cred.Pid, nil
}
