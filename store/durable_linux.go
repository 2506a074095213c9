package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DurableFile writes a preallocated file in place, each WriteDurable made durable before it
// returns: the audit journal's writes (journal.go). It is exported for brokerbench's disk probe,
// which must time exactly what the journal does for a lone call.
//
// Writes go through O_DIRECT where the file system takes it: through the page cache, every
// fdatasync also writes back whatever else of the file is dirty (journal.go's comment has the
// numbers). Nothing is refused for want of it.
//
// It is not safe for concurrent use: a write may swap its descriptor (see WriteAt), so its owner
// makes one call at a time (the journal's single writer; brokerbench's probe takes a lock).
type DurableFile struct {
	f      *os.File // buffered: created and read through it, closed by Close
	w      *os.File // writes: O_DIRECT where supported, else f
	noSync bool     // tests and seeding: WriteDurable and Sync write but do not sync
	// plainSync is set once the kernel refused pwritev2 (Linux 4.6+) or RWF_DSYNC (4.7+): from
	// then on a write is followed by fdatasync, two calls.
	plainSync bool
	pwritev2  func(fd int, iovs [][]byte, off int64, flags int) (int, error) // unix.Pwritev2; tests play older kernels
	iov       [1][]byte                                                      // WriteDurable's iovec, kept: no allocation per write
}

// NewDurableFile returns f's DurableFile, which owns f from then on (Close closes it).
func NewDurableFile(f *os.File) *DurableFile {
	d := newDurableFile(f, false)
	return &d
}

func newDurableFile(f *os.File, noSync bool) DurableFile {
	d := DurableFile{f: f, w: f, noSync: noSync, pwritev2: unix.Pwritev2}
	// O_DIRECT, or the buffered descriptor where the file system refuses it (EINVAL: tmpfs; no
	// /proc; any other refusal). The path checked at open is reopened through /proc, so it is the
	// same file, not whatever the name points to now.
	if w, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
		d.w = w
	}
	return d
}

// Direct reports whether writes go through O_DIRECT.
func (d *DurableFile) Direct() bool { return d.w != d.f }

// DSync reports whether WriteDurable is one pwritev2(RWF_DSYNC) (false: write, then fdatasync).
func (d *DurableFile) DSync() bool { return !d.plainSync }

// Sync makes the writes so far durable (fdatasync).
func (d *DurableFile) Sync() error {
	if d.noSync {
		return nil
	}
	return unix.Fdatasync(int(d.w.Fd()))
}

// WriteDurable writes buf at off and makes it durable. It is one pwritev2 with RWF_DSYNC, which
// the kernel completes through the same sync routine fdatasync calls (a flush after the write, or
// a FUA write where the disk has one): one blocking call instead of two, so the Go scheduler hands
// the writer's P off once per write, not twice, which a lone call at c=1 waits for. Where the
// kernel refuses the call or the flag, or writes short, buf is written and fdatasynced the plain
// way (the same bytes at the same offset: rewriting them is harmless).
func (d *DurableFile) WriteDurable(buf []byte, off int64) error {
	if d.noSync {
		return d.WriteAt(buf, off)
	}
	for !d.plainSync {
		d.iov[0] = buf
		n, err := d.pwritev2(int(d.w.Fd()), d.iov[:], off, unix.RWF_DSYNC)
		d.iov[0] = nil
		switch {
		case err == nil && n == len(buf):
			return nil
		case err == nil:
			// Short: this write the plain way (below); the next one tries the flag again.
		case errors.Is(err, unix.EINTR):
			continue // as os.File's writes do
		case errors.Is(err, unix.EINVAL) && d.Direct():
			// A file system that took O_DIRECT at open but refuses the write (a flag it did not
			// know would be EOPNOTSUPP): write buffered from here on, as WriteAt does, and try
			// the flag again on that descriptor.
			d.dropDirect()
			continue
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM):
			// No pwritev2 (before Linux 4.6, or a seccomp filter that does not know it: EPERM
			// under brokerd's unit, which would otherwise fail every other write) or no
			// RWF_DSYNC (before 4.7): write, then fdatasync, from now on.
			d.plainSync = true
		default:
			return err
		}
		break
	}
	if err := d.WriteAt(buf, off); err != nil {
		return err
	}
	return d.Sync()
}

// WriteAt writes buf at off, not synced. A file system that took O_DIRECT at open but refuses the
// write (EINVAL: some stacked or encrypted file systems check only then) would fail every write;
// d then writes buffered from here on, and this write is retried that way.
func (d *DurableFile) WriteAt(buf []byte, off int64) error {
	_, err := d.w.WriteAt(buf, off)
	if err != nil && d.Direct() && errors.Is(err, syscall.EINVAL) {
		d.dropDirect()
		_, err = d.w.WriteAt(buf, off)
	}
	return err
}

// dropDirect closes the O_DIRECT descriptor: d writes buffered from then on.
func (d *DurableFile) dropDirect() {
	d.w.Close()
	d.w = d.f
}

// Close closes both descriptors.
func (d *DurableFile) Close() error {
	if d.Direct() {
		d.w.Close()
	}
	return d.f.Close()
}
