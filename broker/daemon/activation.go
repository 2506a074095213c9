package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
)

// openListener returns the socket to serve on and whether systemd passed it (socket activation).
// A passed socket belongs to credbroker.socket: brokerd serves on it, leaves its mode and group to
// the unit, and never unlinks it, so connections queue there across restarts.
func openListener(cfg Config, log *slog.Logger) (net.Listener, bool, error) {
	lis, err := activatedListener(log)
	if err != nil {
		return nil, false, err
	}
	if lis != nil {
		log.Info("using the socket passed by systemd (socket activation)", "socket", lis.Addr().String())
		return lis, true, nil
	}
	if cfg.DefaultSocketSource != "" {
		// A client run by another user, or with another environment, looks elsewhere: say where
		// this one is and why, so "no such file" on the client side can be matched against it.
		log.Info("no --socket or $CREDBROKER_SOCKET given: using the default socket path", "socket", cfg.Socket, "chosen_by", cfg.DefaultSocketSource)
	}
	lis, err = listen(cfg.Socket, cfg.SocketMode, cfg.SocketGroup)
	return lis, false, err
}

// activatedListener returns the listening Unix socket passed with LISTEN_FDS/LISTEN_PID, or nil
// when brokerd was not socket-activated. It clears LISTEN_* from the environment either way.
func activatedListener(log *slog.Logger) (net.Listener, error) {
	if os.Getenv("LISTEN_FDS") == "" {
		return nil, nil
	}
	listenPID := os.Getenv("LISTEN_PID")
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(ls) == 0 {
		// sd_listen_fds(3) semantics: the fds were meant for another process (LISTEN_PID differs).
		log.Warn("LISTEN_FDS is set but not for this process; creating the socket instead", "listen_pid", listenPID, "pid", os.Getpid())
		return nil, nil
	}
	closeAll := func() {
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
	}
	if len(ls) != 1 {
		closeAll()
		return nil, fmt.Errorf("socket activation: systemd passed %d sockets; credbroker.socket must have exactly one ListenStream=", len(ls))
	}
	if ls[0] == nil {
		return nil, fmt.Errorf("socket activation: the passed file descriptor 3 is not a listening stream socket; use ListenStream= in credbroker.socket")
	}
	ul, ok := ls[0].(*net.UnixListener)
	if !ok {
		addr := ls[0].Addr()
		closeAll()
		return nil, fmt.Errorf("socket activation: the passed socket listens on %s %s; brokerd serves only on a Unix socket, where SO_PEERCRED identifies callers", addr.Network(), addr)
	}
	// Closing our copy must never remove systemd's socket file.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
