package store

import (
	"fmt"
	"os"
	"path/filepath"
)

// MkdirParent creates the directory that will hold path (and any missing directories above it)
// with mode 0700, so that brokerd's database and the master keyset can live in a directory that
// does not exist yet, such as /var/lib/credbroker on a fresh machine. A directory that already
// exists is left exactly as it is: its mode is the operator's (or systemd's) choice, and
// tightening it here could lock other users out of something they rely on, while loosening it
// would expose what it holds.
func MkdirParent(path string) error {
	// MkdirAll applies the mode only to the directories it creates.
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s for %s: %w", dir, path, err)
	}
	return nil
}
