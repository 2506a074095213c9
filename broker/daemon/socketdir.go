package daemon

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// checkSocketDir refuses to serve in a directory where another user could replace the socket
// (socket squatting): whoever may rename or unlink names in the directory holding the socket, or
// in any directory above it, can put a socket of their own at the path clients dial, and receive
// the tokens and secrets they send. A directory qualifies when it is owned by root or by brokerd's
// effective uid and is not writable by group or others, or is sticky (like /tmp: others may add
// names there but not remove or rename ours).
//
// Both the path as written and the path after symlinks are checked: a symlink on the way may be
// replaced by whoever owns it, so it must be owned by root or brokerd's uid too.
//
// Socket activation does not come here: systemd made that socket and its directory.
func checkSocketDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("socket directory %s: %w", dir, err)
	}
	euid := uint32(os.Geteuid())
	for _, d := range ancestors(abs) {
		var st syscall.Stat_t
		if err := syscall.Lstat(d, &st); err != nil {
			return fmt.Errorf("socket directory %s: %w", d, err)
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFLNK && st.Uid != 0 && st.Uid != euid {
			return fmt.Errorf("socket directory %s: %s is a symlink owned by %s, who could point it elsewhere and serve a socket of their own to brokerd's clients; use a path without it (brokerd runs as uid %d)",
				abs, d, owner(st.Uid), euid)
		}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("socket directory %s: %w", abs, err)
	}
	for _, d := range ancestors(real) {
		var st syscall.Stat_t
		if err := syscall.Stat(d, &st); err != nil {
			return fmt.Errorf("socket directory %s: %w", d, err)
		}
		if err := safeDir(d, st, euid); err != nil {
			if d == real {
				return fmt.Errorf("socket directory %w", err)
			}
			return fmt.Errorf("socket directory %s is inside %w", real, err)
		}
	}
	return nil
}

// safeDir reports why the directory d (stat st) would let someone other than root and euid
// replace the names in it, or nil when it does not.
func safeDir(d string, st syscall.Stat_t, euid uint32) error {
	mode := st.Mode & 0o7777
	if st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("%s (owner %s, mode %#o): it is owned by another user, who could replace brokerd's socket with one of their own; "+
			"remove it or use a directory owned by root or by brokerd's uid %d", d, owner(st.Uid), mode, euid)
	}
	if mode&0o022 != 0 && mode&syscall.S_ISVTX == 0 {
		return fmt.Errorf("%s (owner %s, mode %#o): it is writable by group or others without the sticky bit, so they could replace brokerd's socket with one of their own; "+
			"chmod go-w %s (or use another directory)", d, owner(st.Uid), mode, d)
	}
	return nil
}

// owner names uid for an error message: "uid 1000 (alice)".
func owner(uid uint32) string {
	s := "uid " + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		s += " (" + u.Username + ")"
	}
	return s
}

// ancestors lists dir and every directory above it, root first.
func ancestors(dir string) []string {
	var out []string
	for {
		out = append([]string{dir}, out...)
		parent := filepath.Dir(dir)
		if parent == dir {
			return out
		}
		dir = parent
	}
}
