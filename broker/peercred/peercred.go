// Package peercred identifies the process at the other end of a Unix socket. Its gRPC transport
// credentials read SO_PEERCRED once per connection, at accept, and put the peer's uid, gid and pid in
// the connection's peer.AuthInfo so every handler and the audit see who called. Where the kernel
// has SO_PEERPIDFD (Linux 6.5+) it also takes a pidfd for the peer and uses it to name the
// calling program (/proc/PID/exe and comm) without racing pid reuse.
//
// It adds no encryption: the socket is local and its file mode is the access control.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// AuthInfo is the peer's identity as the kernel reported it when the connection was accepted.
// The kernel records credentials at connect() time, so a later setuid in the peer does not change
// them. Access decisions use UID, GID and Groups only; the rest says which process it was, for the
// audit.
type AuthInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
	// Groups are the peer's supplementary groups as the kernel recorded them with UID and GID
	// (SO_PEERGROUPS), so they too belong to the process that connected, as it was then; nil when
	// the kernel has no SO_PEERGROUPS (before Linux 4.13). A connected socket handed to another
	// process (SCM_RIGHTS, fork) keeps the connector's UID, GID and Groups.
	Groups []uint32
	// PIDFD is true when the kernel handed over a pidfd for the peer and the process was still
	// alive after Exe and Comm were read, so they describe the caller and not a process that
	// reused its pid. Without it (older kernels), Exe and Comm are empty.
	PIDFD bool
	// Exe is the peer's executable path, when brokerd may read /proc/PID/exe: ptrace read access,
	// i.e. a dumpable peer of brokerd's own uid, or CAP_SYS_PTRACE (root with its usual
	// capabilities). Under the shipped unit's ProtectProc=invisible, only brokerd's own uid.
	Exe string
	// Comm is the peer's command name (/proc/PID/comm), when /proc shows brokerd the process. The
	// peer chooses it (prctl PR_SET_NAME): it is a hint, and may hold any bytes but NUL.
	Comm string
	// StartTime is the peer's start time (see StartTime), read while the pidfd pinned it; 0
	// without a pidfd. Attestation uses it to find the same process again, never a reused pid.
	StartTime uint64
	// PidfdInode names the peer process like StartTime, from its pidfd on pidfs (Linux 6.9+),
	// without reading /proc; 0 otherwise.
	PidfdInode uint64
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// ErrNoPeerCred reports a connection that carries no kernel credentials (not a Unix socket).
var ErrNoPeerCred = errors.New("connection has no peer credentials (not a Unix socket)")

// TransportCredentials returns server transport credentials that attach AuthInfo to each
// connection. Non-Unix connections are refused.
func TransportCredentials() credentials.TransportCredentials { return creds{} }

type creds struct{}

func (creds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (creds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := Read(conn)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, info, nil
}

func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (c creds) Clone() credentials.TransportCredentials { return c }

func (creds) OverrideServerName(string) error { return nil }

// Read returns the kernel's credentials for the peer of a Unix socket connection. A wrapper
// around one (connlimit's) is looked through by its NetConn method, as for tls.Conn.
func Read(conn net.Conn) (AuthInfo, error) {
	if w, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = w.NetConn()
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return AuthInfo{}, ErrNoPeerCred
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return AuthInfo{}, fmt.Errorf("peer credentials: %w", err)
	}
	uid, gid, pid, err := Ucred(uc)
	if err != nil {
		return AuthInfo{}, err
	}
	info := AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		UID:            uid, GID: gid, PID: pid,
	}
	var groupsErr error
	if err := raw.Control(func(fd uintptr) { info.Groups, groupsErr = peerGroups(int(fd)) }); err != nil || groupsErr != nil {
		info.Groups = nil // an old kernel: the primary gid alone decides
	}
	var (
		pidfd    = -1
		pidfdErr error
	)
	if err := raw.Control(func(fd uintptr) { pidfd, pidfdErr = peerPidfd(int(fd)) }); err != nil || pidfdErr != nil {
		return info, nil // old kernel, or the peer is already gone: SO_PEERCRED alone
	}
	defer unix.Close(pidfd)
	p, err := identify(pidfd)
	if err != nil || p.pid != pid {
		// Reaped already, or the pidfd's pid differs from SO_PEERCRED's (the /proc brokerd reads
		// belongs to another pid namespace than brokerd): nothing about the process can be
		// vouched for.
		return info, nil
	}
	info.PIDFD, info.Exe, info.Comm, info.StartTime, info.PidfdInode = true, p.exe, p.comm, p.start, p.ino
	return info, nil
}

// Groups returns the peer's supplementary groups as the kernel recorded them at connect
// (SO_PEERGROUPS; see AuthInfo.Groups): one getsockopt, cheap enough for every accept. nil with an
// error on a kernel without SO_PEERGROUPS.
func Groups(uc *net.UnixConn) ([]uint32, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer groups: %w", err)
	}
	var (
		groups    []uint32
		groupsErr error
	)
	if err := raw.Control(func(fd uintptr) { groups, groupsErr = peerGroups(int(fd)) }); err != nil {
		return nil, fmt.Errorf("peer groups: %w", err)
	}
	if groupsErr != nil {
		return nil, fmt.Errorf("peer groups: SO_PEERGROUPS: %w", groupsErr)
	}
	return groups, nil
}

// FromContext returns the caller's AuthInfo for a server-side call context.
func FromContext(ctx context.Context) (AuthInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return AuthInfo{}, false
	}
	info, ok := p.AuthInfo.(AuthInfo)
	return info, ok
}

// process is what a pidfd lets brokerd learn about the peer without racing pid reuse.
type process struct {
	pid  int32  // the peer's pid in brokerd's pid namespace, from the pidfd
	exe  string // /proc/PID/exe, when brokerd may read it (same uid or root)
	comm string // /proc/PID/comm
	// start is the process's start time (StartTime): with pid, a name no later process reuses.
	start uint64
	// ino is the pidfd's inode on pidfs (PidfdInode), another such name; 0 before Linux 6.9.
	ino uint64
}
