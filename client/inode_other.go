//go:build !unix

package client

import "os"

func inode(os.FileInfo) uint64 { return 0 }

// openNonblock: no FIFOs to guard against here.
const openNonblock = 0
