package store

import "golang.org/x/sys/unix"

// dropMapped advises the kernel that the n bytes of mapping at addr are not needed: their page
// table entries go, the page cache keeps the pages. An error (none is expected) only leaves the
// pages mapped.
func dropMapped(addr, n uintptr) {
	if n > 0 {
		unix.Syscall(unix.SYS_MADVISE, addr, n, unix.MADV_DONTNEED)
	}
}
