package peercred

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The kernel's sock_diag interface (linux/inet_diag.h), which x/sys/unix does not define.
const (
	sizeofInetDiagReqV2 = 56 // family, protocol, ext, pad, states, inet_diag_sockid (48)
	sizeofInetDiagMsg   = 72 // family, state, timer, retrans, sockid (48), expires, rqueue, wqueue, uid, inode
	tcpEstablished      = 1
)

// diagBroken is set once sock_diag is found forbidden or missing here, so later lookups go
// straight to the /proc table.
var diagBroken atomic.Bool

// noDiag returns err as errNoDiag, and remembers it, when it says sock_diag cannot work here at
// all (not, say, that brokerd is out of file descriptors for the moment).
func noDiag(err error) error {
	switch {
	case errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EPERM),
		errors.Is(err, unix.EACCES), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
		diagBroken.Store(true)
		return fmt.Errorf("%w: %v", errNoDiag, err)
	}
	return fmt.Errorf("sock_diag: %w", err)
}

// diagTCPUID asks the kernel for the one TCP socket whose local address is local and remote
// address is remote (a sock_diag request without NLM_F_DUMP: the kernel looks the 4-tuple up in
// its hash of established sockets) and returns its owner's uid, as /proc/net/tcp would show it.
// found is false when no such established socket exists. Unlike a scan of /proc/net/tcp, the
// cost does not grow with the number of sockets on the machine, which any local user can make
// large (each of its connections, and each one it closes, for a minute in TIME_WAIT).
func diagTCPUID(local, remote *net.TCPAddr) (uid uint32, found bool, err error) {
	if diagBroken.Load() {
		return 0, false, errNoDiag
	}
	family, src, dst := uint8(unix.AF_INET), local.IP.To4(), remote.IP.To4()
	if src == nil || dst == nil {
		family, src, dst = unix.AF_INET6, local.IP.To16(), remote.IP.To16()
	}
	if src == nil || dst == nil {
		return 0, false, fmt.Errorf("bad address %s or %s", local, remote)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, false, noDiag(err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, false, noDiag(err)
	}

	req := make([]byte, unix.SizeofNlMsghdr+sizeofInetDiagReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence number
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpEstablished)
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], uint16(local.Port))
	binary.BigEndian.PutUint16(id[2:], uint16(remote.Port))
	copy(id[4:20], src)
	copy(id[20:36], dst)
	ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], ^uint32(0))
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, false, noDiag(err)
	}

	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, false, fmt.Errorf("sock_diag: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil || len(msgs) == 0 {
		return 0, false, fmt.Errorf("sock_diag: unparsable answer (%v)", err)
	}
	m := msgs[0]
	switch m.Header.Type {
	case unix.NLMSG_ERROR:
		if len(m.Data) < 4 {
			return 0, false, errors.New("sock_diag: short error")
		}
		errno := unix.Errno(-int32(ne.Uint32(m.Data)))
		if errno == unix.ENOENT {
			return 0, false, nil
		}
		// EINVAL, EOPNOTSUPP (no inet_diag module), EPERM: not an answer about the socket.
		return 0, false, noDiag(errno)
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(m.Data) < sizeofInetDiagMsg {
			return 0, false, errors.New("sock_diag: short answer")
		}
		// The exact lookup also finds TIME_WAIT and half-open sockets, whose uid field is 0:
		// only an established socket's owner counts.
		if m.Data[1] != tcpEstablished {
			return 0, false, nil
		}
		got := m.Data[4:52]
		if binary.BigEndian.Uint16(got[0:]) != uint16(local.Port) || binary.BigEndian.Uint16(got[2:]) != uint16(remote.Port) {
			return 0, false, errors.New("sock_diag: answer about another socket")
		}
		return ne.Uint32(m.Data[64:]), true, nil
	}
	return 0, false, fmt.Errorf("sock_diag: unexpected answer type %d", m.Header.Type)
}
