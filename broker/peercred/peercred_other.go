//go:build !linux

package peercred

import (
	"errors"
	"fmt"
	"net"
)

// errUnsupported is every kernel question's answer off Linux: brokerd runs on Linux only, and the
// package builds elsewhere only so brokerctl's offline commands do.
var errUnsupported = errors.New("not supported on this system: brokerd runs on Linux only")

// Ucred returns SO_PEERCRED's uid, gid and pid on Linux; elsewhere an error.
func Ucred(*net.UnixConn) (uid, gid uint32, pid int32, err error) {
	return 0, 0, 0, fmt.Errorf("peer credentials: %w", errUnsupported)
}

func peerGroups(int) ([]uint32, error) { return nil, errUnsupported }

func peerPidfd(int) (int, error) { return -1, errUnsupported }

func identify(int) (process, error) { return process{}, errUnsupported }

func diagTCPUID(_, _ *net.TCPAddr) (uint32, bool, error) {
	return 0, false, fmt.Errorf("loopback peer's uid: %w", errUnsupported)
}
