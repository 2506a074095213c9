//go:build unix

package client

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// socketDenied explains an EACCES from connecting to path: the socket or one of its directories
// lets the caller in only through a group, so name the group and how to join it.
func socketDenied(path string, cause error) string {
	uid := os.Geteuid()
	who := strconv.Itoa(uid)
	if u, err := user.LookupId(who); err == nil {
		who = u.Username
	}
	// The first directory on the way that the caller may not search refused it, else the socket.
	denied := path
	for _, dir := range ancestors(filepath.Dir(path)) {
		if syscall.Access(dir, 1 /* X_OK */) != nil {
			denied = dir
			break
		}
	}
	var st syscall.Stat_t
	if syscall.Stat(denied, &st) != nil {
		return fmt.Sprintf("permission denied on %s: your uid %d may not reach it (%v); ask an operator which group may", path, uid, cause)
	}
	gid := int(st.Gid)
	group := strconv.Itoa(gid)
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	// In a normal install the socket and its directory share the group that may connect
	// (credbroker), so the group of whichever refused is the one to join.
	if int(st.Uid) == uid {
		return fmt.Sprintf("permission denied on %s: your uid %d owns %s, but its mode (%#o) lets you no access", path, uid, denied, st.Mode&0o777)
	}
	if inGroup(gid) {
		return fmt.Sprintf("permission denied on %s: your uid %d is in group %s, but the mode of %s (%#o) gives that group no access; ask an operator to fix it (brokerd --socket-mode 0660)",
			path, uid, group, denied, st.Mode&0o777)
	}
	if listed(who, group) {
		return fmt.Sprintf("permission denied on %s: your uid %d was added to group %s after this session started; log in again (or run `newgrp %s`)",
			path, uid, group, group)
	}
	return fmt.Sprintf("permission denied on %s: your uid %d is not in group %s (ask an operator: usermod -aG %s %s)", path, uid, group, group, who)
}

// inGroup reports whether this process has gid, as its own or a supplementary group.
func inGroup(gid int) bool {
	if os.Getegid() == gid {
		return true
	}
	groups, _ := os.Getgroups()
	return slices.Contains(groups, gid)
}

// listed reports whether the group database names the user as a member of group, though the
// process lacks it (the user was added after logging in).
func listed(username, group string) bool {
	u, err := user.Lookup(username)
	if err != nil {
		return false
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return false
	}
	ids, err := u.GroupIds()
	return err == nil && slices.Contains(ids, g.Gid)
}
