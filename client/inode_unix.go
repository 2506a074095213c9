//go:build unix

package client

import (
	"os"
	"syscall"
)

// openNonblock opens a FIFO without waiting for a writer; it changes nothing for a regular file.
const openNonblock = syscall.O_NONBLOCK

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}
