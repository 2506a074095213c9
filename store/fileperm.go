package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrFileOwner reports a database or master keyset file that brokerd must not trust: a symbolic
// link where the database should be, not a regular file, or owned by another user (who could
// replace its contents, or read them).
var ErrFileOwner = errors.New("unsafe file")

// fileOwner returns fi's owner uid, or false where the platform does not say.
func fileOwner(fi fs.FileInfo) (uint32, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Uid, true
}

// checkDBInfo refuses a database file that is not a regular file owned by this process's
// effective uid. It looks only; it changes nothing.
func checkDBInfo(path string, fi fs.FileInfo) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: database %s is a symbolic link; brokerd does not follow links to its database: give the real path with --db", ErrFileOwner, path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: database %s is not a regular file (%s)", ErrFileOwner, path, fi.Mode().Type())
	}
	if uid, ok := fileOwner(fi); ok && int(uid) != os.Geteuid() {
		return fmt.Errorf("%w: database %s is owned by uid %d, not by brokerd's uid %d; another user could change it: `chown %d %s`, or run brokerd as its owner",
			ErrFileOwner, path, uid, os.Geteuid(), os.Geteuid(), path)
	}
	return nil
}

// checkDBPath refuses, without changing anything, a database path that is a symbolic link, not
// a regular file, or owned by another uid. A path that does not exist yet passes: bbolt creates it.
func checkDBPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("database %s: %w", path, err)
	}
	return checkDBInfo(path, fi)
}

// openDBFile is bbolt's OpenFile: it opens the database without following a symbolic link
// (O_NOFOLLOW), checks the file it got is regular and ours, and only then tightens a loosened
// mode, on that same descriptor, so the file checked is the file changed and used.
func openDBFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(name, flag|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: database %s is a symbolic link; brokerd does not follow links to its database: give the real path with --db", ErrFileOwner, name)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkDBInfo(name, fi)
	}
	if err == nil && fi.Mode().Perm()&0o077 != 0 {
		// bbolt only applies the mode on create; tighten a file someone loosened.
		if cerr := f.Chmod(0o600); cerr != nil {
			err = fmt.Errorf("database %s has mode %#o and cannot be made 0600: %w", name, fi.Mode().Perm(), cerr)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ErrSecretFileMode reports a file holding a secret (the master keyset, a KMS token) that group or
// others can read.
var ErrSecretFileMode = errors.New("readable by group or others")

// ReadSecretFile reads a small file holding a secret: the master keyset (--master-keyset), or a
// KMS token such as the Vault token file. It refuses anything but a regular file of at most max
// bytes that only its owner can read (no group or other bits), owned by this process's effective
// uid or root (checkSecretOwner). The checks are made on the descriptor that is read, so the file
// checked is the file read; a symbolic link is followed and the file it leads to is what must pass
// (systemd credentials and Kubernetes secret volumes hand files over that way). what names the
// file in errors ("master keyset", "Vault token file"); no error quotes its contents.
func ReadSecretFile(path, what string, max int64) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO for reading blocks until a writer comes, which would hang a start
	// or a reload on a misplaced pipe instead of refusing it below. It changes nothing for a
	// regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s %s: %w", what, path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if err := checkSecretOwner(what, path, st); err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s has mode %#o, %w; run `chmod 600 %s`", what, path, st.Mode().Perm(), ErrSecretFileMode, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if int64(len(data)) > max {
		clear(data)
		return nil, fmt.Errorf("%s %s is larger than %d bytes; is it the right file?", what, path, max)
	}
	return data, nil
}

// checkSecretOwner refuses a secret file (what names it) owned by anyone but this process's
// effective uid or root: another user who owns it could read it, or swap in a secret of their
// own (a master keyset they hold, under which every credential stored afterwards would be
// encrypted). Root-owned is fine (only root could change it), and is how systemd hands over
// $CREDENTIALS_DIRECTORY files: root-owned and 0400, readable by the service's user.
func checkSecretOwner(what, path string, fi fs.FileInfo) error {
	uid, ok := fileOwner(fi)
	if !ok || uid == 0 || int(uid) == os.Geteuid() {
		return nil
	}
	return fmt.Errorf("%w: %s %s is owned by uid %d, not by uid %d or root; another user could read or replace it: `chown %d %s`",
		ErrFileOwner, what, path, uid, os.Geteuid(), os.Geteuid(), path)
}
