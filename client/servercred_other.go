//go:build !linux

package client

import (
	"errors"
	"net"
)

// serverCred is not implemented off Linux, where brokerd does not run: the client cannot tell who
// serves a socket there, so it refuses to send anything.
func serverCred(*net.UnixConn) (uint32, int32, error) {
	return 0, 0, errors.New("reading the server's credentials is implemented on Linux only")
}
