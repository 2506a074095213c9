package client

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
)

// ServerUIDEnv names the environment variable listing, comma-separated, the uids besides root and
// the client's own that may serve the socket (the uid brokerd runs as, when it creates its own
// socket as another user).
const ServerUIDEnv = "CREDBROKER_SERVER_UID"

// ErrUntrustedServer: the process serving the socket runs as a uid the client does not trust
// (not root, not the client's own, not in CREDBROKER_SERVER_UID or WithServerUID), so it may be
// someone squatting on the path. Nothing was sent to it: no token, no secret, no request. Its Code
// is PermissionDenied.
var ErrUntrustedServer = errors.New("socket served by an untrusted uid")

// WithServerUID adds uids that may serve the socket, besides root, the client's own effective uid
// and those in $CREDBROKER_SERVER_UID.
func WithServerUID(uids ...uint32) Option {
	return func(o *options) { o.serverUIDs = append(o.serverUIDs, uids...) }
}

// serverUIDs returns the uids that may serve the socket: root, euid, then $CREDBROKER_SERVER_UID and
// extra. A malformed variable is an error, not ignored: ignoring it would refuse the server the
// operator meant to allow, with a message that hides why.
func serverUIDs(getenv func(string) string, euid int, extra []uint32) ([]uint32, error) {
	uids := []uint32{0, uint32(euid)}
	if v := strings.TrimSpace(getenv(ServerUIDEnv)); v != "" {
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("$%s=%q: %q is not a numeric uid (want e.g. %s=$(id -u credbroker))", ServerUIDEnv, v, f, ServerUIDEnv)
			}
			uids = append(uids, uint32(n))
		}
	}
	return append(uids, extra...), nil
}

// untrustedServer is the dial error for a socket served by a uid not in trusted.
type untrustedServer struct {
	path string
	uid  uint32
	pid  int32
}

func (e *untrustedServer) Error() string {
	return fmt.Sprintf("the socket %s is served by uid %d (pid %d), not root, your uid %d or $%s; refusing to send a token or secret (if that uid is brokerd's, set %s=%d)",
		e.path, e.uid, e.pid, os.Geteuid(), ServerUIDEnv, ServerUIDEnv, e.uid)
}

func (e *untrustedServer) asError() *Error {
	return &Error{Code: codes.PermissionDenied, Message: e.Error(), sentinel: ErrUntrustedServer}
}

// checkServer reads the server's credentials off the connected socket and refuses a uid not in
// trusted. It runs in the dialer, before gRPC writes a byte on the connection. For a listening
// socket the kernel reports who called listen(2): brokerd itself, or systemd (root) under socket
// activation.
func checkServer(conn net.Conn, path string, trusted []uint32) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%s: not a Unix socket connection; cannot tell who serves it", path)
	}
	uid, pid, err := serverCred(uc)
	if err != nil {
		return fmt.Errorf("%s: cannot tell who serves the socket, so nothing is sent: %w", path, err)
	}
	if !slices.Contains(trusted, uid) {
		return &untrustedServer{path: path, uid: uid, pid: pid}
	}
	return nil
}
