package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// keysetTmpfile is whether createKeysetFile tries O_TMPFILE first; tests turn it off to exercise
// the named temporary file that file systems without O_TMPFILE get.
var keysetTmpfile = true

// createKeysetFile gives path the contents data, mode 0600, never overwriting and never leaving a
// partial file at path. The keyset is written into an unnamed file (O_TMPFILE) in path's
// directory and fsynced, then linked to path through /proc/self/fd (linkat with
// AT_SYMLINK_FOLLOW, which needs no privilege, unlike AT_EMPTY_PATH). linkat fails with EEXIST
// if path exists, so an existing keyset is never replaced. A crash before the link leaves
// nothing: the unnamed file goes with the last descriptor. Where the file system has no O_TMPFILE
// (or /proc is not mounted), a named temporary file does the same (createKeysetFileNamed). The
// caller fsyncs the directory.
func createKeysetFile(path string, data []byte) error {
	if !keysetTmpfile {
		return createKeysetFileNamed(path, data)
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		// EISDIR, EINVAL: a kernel or file system without O_TMPFILE; EOPNOTSUPP: a file system
		// that knows it and does not support it.
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			return createKeysetFileNamed(path, data)
		}
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	err = unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return errKeysetExists(path)
	case errors.Is(err, unix.ENOENT):
		// No /proc (a chroot, a minimal container): the named way needs none.
		if _, serr := os.Stat(proc); serr != nil {
			return createKeysetFileNamed(path, data)
		}
	}
	return fmt.Errorf("write master keyset %s: %w", path, err)
}
