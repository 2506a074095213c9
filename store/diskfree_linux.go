package store

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DiskFree returns the bytes brokerd may still use on the file system holding the database.
// It reads the file system (statfs), not the database, so it answers while writes fail.
func (s *Store) DiskFree() (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(s.db.Path()), &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", filepath.Dir(s.db.Path()), err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
