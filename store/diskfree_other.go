//go:build !linux

package store

import "errors"

// DiskFree returns the bytes brokerd may still use on the file system holding the database, on
// Linux (diskfree_linux.go). Only brokerd asks, and brokerd runs on Linux only; the store builds
// elsewhere for brokerctl's offline commands.
func (s *Store) DiskFree() (uint64, error) {
	return 0, errors.New("disk free space: not supported on this system: brokerd runs on Linux only")
}
