package client

import (
	"net"

	"golang.org/x/sys/unix"
)

// serverCred returns the uid and pid the kernel recorded for the server end of uc (SO_PEERCRED):
// for a listening socket, the process that called listen(2).
func serverCred(uc *net.UnixConn) (uid uint32, pid int32, err error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var (
		cred    *unix.Ucred
		credErr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if credErr != nil {
		return 0, 0, credErr
	}
	return cred.Uid, cred.Pid, nil
}
