package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// openListener returns the socket to serve on and whether systemd passed it (socket activation).
// A passed socket belongs to credbroker.socket: brokerd serves on it, leaves its mode and group to
// the unit, and never unlinks it, so connections queue there across restarts.
func openListener(cfg Config, log *slog.Logger) (net.Listener, bool, error) {
	lis, elsewhere, err := activatedListener(log)
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
	var live *liveSocketError
	if errors.As(err, &live) && elsewhere != "" {
		// Most likely not another brokerd but systemd's own socket, passed to a wrapper that
		// then started brokerd as its child: say so, rather than send the operator looking
		// for a second brokerd.
		return nil, false, fmt.Errorf("socket %s is live, most likely the one systemd passed (socket activation): %s", cfg.Socket, elsewhere)
	}
	return lis, false, err
}

// activatedListener returns the listening Unix socket passed with LISTEN_FDS/LISTEN_PID, or nil
// when brokerd was not socket-activated. It clears LISTEN_* from the environment either way.
// When LISTEN_FDS is set for another process, elsewhere says so and what to change, for the error
// if the socket brokerd then tries to create turns out live (systemd's, held for the wrapper).
// Anything but exactly one listening Unix stream socket is refused at once, naming the unit setting
// to fix (sd_is_socket_unix(3) checks the same): Go's FileListener takes a datagram, seqpacket or
// unlistened stream socket for a listener too, and brokerd then failed 10 s later because its own
// health check could not connect.
func activatedListener(log *slog.Logger) (_ net.Listener, elsewhere string, _ error) {
	if os.Getenv("LISTEN_FDS") == "" {
		return nil, "", nil
	}
	listenPID := os.Getenv("LISTEN_PID")
	files := activation.Files(true)
	if len(files) == 0 {
		// sd_listen_fds(3) semantics: the fds were meant for another process (LISTEN_PID differs).
		log.Warn("LISTEN_FDS is set but not for this process; creating the socket instead", "listen_pid", listenPID, "pid", os.Getpid())
		if listenPID != strconv.Itoa(os.Getpid()) {
			whose := "for pid " + listenPID
			if listenPID == "" {
				whose = "without LISTEN_PID"
			}
			elsewhere = fmt.Sprintf("LISTEN_FDS was set %s, not brokerd's pid %d: the unit runs brokerd through a wrapper that does not exec it; "+
				"make the wrapper `exec brokerd ...` so brokerd inherits the socket", whose, os.Getpid())
		}
		return nil, elsewhere, nil
	}
	defer func() {
		for _, f := range files {
			f.Close() // FileListener dups the one it keeps
		}
	}()
	if len(files) != 1 {
		return nil, "", fmt.Errorf("socket activation: systemd passed %d file descriptors; credbroker.socket must have exactly one ListenStream= and nothing else", len(files))
	}
	if err := checkActivatedSocket(files[0]); err != nil {
		return nil, "", fmt.Errorf("socket activation: the passed file descriptor 3 %w", err)
	}
	l, err := net.FileListener(files[0])
	if err != nil {
		return nil, "", fmt.Errorf("socket activation: file descriptor 3: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, "", fmt.Errorf("socket activation: the passed file descriptor 3 is not a Unix socket; use ListenStream=/run/credbroker/broker.sock in credbroker.socket")
	}
	// Closing our copy must never remove systemd's socket file.
	ul.SetUnlinkOnClose(false)
	return ul, "", nil
}

// checkActivatedSocket reports (as an error completing "the passed file descriptor 3 …") why f is
// not a listening Unix stream socket, or nil when it is.
func checkActivatedSocket(f *os.File) error {
	const fix = "; use ListenStream=/run/credbroker/broker.sock and Accept=no in credbroker.socket"
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("cannot be examined: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return errors.New("is not a socket" + fix)
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("cannot be examined: SO_DOMAIN: %w", err)
	}
	if domain != unix.AF_UNIX {
		addr := "an unknown address"
		if sa, err := unix.Getsockname(fd); err == nil {
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				addr = net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
			case *unix.SockaddrInet6:
				addr = net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
			}
		}
		return fmt.Errorf("is a network socket on %s; brokerd serves only on a Unix socket, where SO_PEERCRED identifies callers%s", addr, fix)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("cannot be examined: SO_TYPE: %w", err)
	}
	switch typ {
	case unix.SOCK_STREAM:
	case unix.SOCK_DGRAM:
		return errors.New("is a datagram socket (ListenDatagram=); brokerd needs a stream socket" + fix)
	case unix.SOCK_SEQPACKET:
		return errors.New("is a seqpacket socket (ListenSequentialPacket=); brokerd needs a stream socket" + fix)
	default:
		return fmt.Errorf("is a Unix socket of type %d; brokerd needs a stream socket%s", typ, fix)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("cannot be examined: SO_ACCEPTCONN: %w", err)
	}
	if listening == 0 {
		return errors.New("is a Unix stream socket that is not listening (a connection, as Accept=yes passes)" + fix)
	}
	return nil
}
