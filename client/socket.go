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

// defaultSocket is DefaultSocket with its inputs passed in, so every branch is testable whatever
// uid the tests run as.
func defaultSocket(getenv func(string) string, euid, uid int) string {
	if p := getenv("CREDBROKER_SOCKET"); p != "" {
		return p
	}
	if dirs := getenv("RUNTIME_DIRECTORY"); dirs != "" {
		// systemd joins several RuntimeDirectory= entries with ':'.
		dir, _, _ := strings.Cut(dirs, ":")
		if dir != "" {
			return filepath.Join(dir, "broker.sock")
		}
	}
	if euid == 0 {
		return "/run/credbroker/broker.sock"
	}
	if dir := getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "credbroker", "broker.sock")
	}
	return filepath.Join("/run/user", strconv.Itoa(uid), "credbroker", "broker.sock")
}
