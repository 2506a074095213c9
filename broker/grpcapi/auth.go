package grpcapi

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
)

// callerFrom returns the kernel-reported identity of the calling process.
func callerFrom(ctx context.Context) broker.Caller {
	info, ok := peercred.FromContext(ctx)
	if !ok {
		return broker.Caller{}
	}
	return broker.Caller{UID: info.UID, GID: info.GID, PID: info.PID, Known: true, PIDFD: info.PIDFD, Exe: info.Exe, Comm: info.Comm, StartTime: info.StartTime, PidfdInode: info.PidfdInode, Groups: info.Groups}
}

// bearerToken returns the token in the "authorization: Bearer <token>" metadata entry.
func bearerToken(ctx context.Context) string {
	// ValueFromIncomingContext copies this key's values only (FromIncomingContext copies the
	// whole metadata map on every call).
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

// Admins decides who may call AdminService: root, the daemon's own uid and the configured uids
// and gids. A gid matches the caller's primary gid or one of its supplementary groups, as the
// kernel recorded them when it connected (peercred.AuthInfo.Groups; the primary gid alone on a
// kernel without SO_PEERGROUPS).
type Admins struct {
	UIDs []uint32
	GIDs []uint32
}

func (a Admins) allowed(c broker.Caller, groups []uint32) bool {
	if !c.Known {
		return false
	}
	if c.UID == 0 || slices.Contains(a.UIDs, c.UID) || slices.Contains(a.GIDs, c.GID) {
		return true
	}
	return slices.ContainsFunc(groups, func(g uint32) bool { return slices.Contains(a.GIDs, g) })
}

// IsAdmin reports whether a peer with uid, gid (SO_PEERCRED) and supplementary groups
// (SO_PEERGROUPS; nil when unknown) is an admin; broker/connlimit uses it to give admins their
// reserve of connections, by the same rule the admin API uses.
func (a Admins) IsAdmin(uid, gid uint32, groups []uint32) bool {
	return a.allowed(broker.Caller{UID: uid, GID: gid, Known: true}, groups)
}

const adminPrefix = "/credbroker.v1.AdminService/"

// authorize refuses AdminService calls from callers that are not admins. It is keyed on the full
// method name so a new admin RPC is covered without touching its handler.
func (a Admins) authorize(ctx context.Context, method string) error {
	if !strings.HasPrefix(method, adminPrefix) {
		return nil
	}
	c := callerFrom(ctx)
	info, _ := peercred.FromContext(ctx)
	if a.allowed(c, info.Groups) {
		return nil
	}
	if !c.Known {
		return refuse(codes.PermissionDenied, broker.ReasonNotAdmin, "admin calls need a Unix-socket peer whose uid brokerd can verify", 0, nil)
	}
	return refuse(codes.PermissionDenied, broker.ReasonNotAdmin, fmt.Sprintf(
		"uid %d (gid %d) may not call %s; an operator can grant access with brokerd --admin-uid %d or --admin-gid %d",
		c.UID, c.GID, strings.TrimPrefix(method, adminPrefix), c.UID, c.GID), 0, nil)
}

func (a Admins) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a Admins) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
