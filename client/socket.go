package client

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultSocket returns the socket path brokerd listens on when nobody said otherwise, checked in
// this order:
//
//   - $CREDBROKER_SOCKET;
//   - $RUNTIME_DIRECTORY/broker.sock (systemd RuntimeDirectory=; the first entry if it lists several);
//   - /run/credbroker/broker.sock when the effective uid is 0;
//   - $XDG_RUNTIME_DIR/credbroker/broker.sock, or /run/user/<uid>/credbroker/broker.sock if
//     XDG_RUNTIME_DIR is unset.
//
// brokerd and brokerctl use the same function so that, run by the same user in the same
// environment, they agree without flags.
func DefaultSocket() string {
	return defaultSocket(os.Getenv, os.Geteuid(), os.Getuid())
}

// DefaultSocketSource is DefaultSocket, plus which rule chose the path, in words an operator can
// act on ("$XDG_RUNTIME_DIR", "the effective uid is 0", …). brokerd logs it when it serves on the
// default path, so a client that cannot find the socket can be matched against it.
func DefaultSocketSource() (path, source string) {
	return defaultSocketSource(os.Getenv, os.Geteuid(), os.Getuid())
}

// defaultSocket is DefaultSocket with its inputs passed in, so every branch is testable whatever
// uid the tests run as.
func defaultSocket(getenv func(string) string, euid, uid int) string {
	p, _ := defaultSocketSource(getenv, euid, uid)
	return p
}

func defaultSocketSource(getenv func(string) string, euid, uid int) (path, source string) {
	if p := getenv("CREDBROKER_SOCKET"); p != "" {
		return p, "$CREDBROKER_SOCKET"
	}
	if dirs := getenv("RUNTIME_DIRECTORY"); dirs != "" {
		// systemd joins several RuntimeDirectory= entries with ':'.
		dir, _, _ := strings.Cut(dirs, ":")
		if dir != "" {
			return filepath.Join(dir, "broker.sock"), "$RUNTIME_DIRECTORY (systemd RuntimeDirectory=)"
		}
	}
	if euid == 0 {
		return "/run/credbroker/broker.sock", "the effective uid is 0 (root)"
	}
	if dir := getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "credbroker", "broker.sock"), "$XDG_RUNTIME_DIR, as a non-root user"
	}
	return filepath.Join("/run/user", strconv.Itoa(uid), "credbroker", "broker.sock"), "/run/user/UID, as a non-root user without $XDG_RUNTIME_DIR"
}
