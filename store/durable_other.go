//go:build !linux

package store

import "os"

// DurableFile writes a preallocated file in place, each WriteDurable made durable before it
// returns (durable_linux.go has brokerd's version). Off Linux, where brokerd does not run and the
// store serves brokerctl's offline commands, it is the plain portable way: pwrite, then fsync; no
// O_DIRECT, no RWF_DSYNC.
type DurableFile struct {
	f      *os.File
	noSync bool // tests and seeding: WriteDurable and Sync write but do not sync
}

// NewDurableFile returns f's DurableFile, which owns f from then on (Close closes it).
func NewDurableFile(f *os.File) *DurableFile {
	d := newDurableFile(f, false)
	return &d
}

func newDurableFile(f *os.File, noSync bool) DurableFile {
	return DurableFile{f: f, noSync: noSync}
}

// Direct reports whether writes go through O_DIRECT: never off Linux.
func (d *DurableFile) Direct() bool { return false }

// DSync reports whether WriteDurable is one pwritev2(RWF_DSYNC): never off Linux.
func (d *DurableFile) DSync() bool { return false }

// Sync makes the writes so far durable (fsync).
func (d *DurableFile) Sync() error {
	if d.noSync {
		return nil
	}
	return d.f.Sync()
}

// WriteDurable writes buf at off and makes it durable: a write, then fsync.
func (d *DurableFile) WriteDurable(buf []byte, off int64) error {
	if err := d.WriteAt(buf, off); err != nil {
		return err
	}
	return d.Sync()
}

// WriteAt writes buf at off, not synced.
func (d *DurableFile) WriteAt(buf []byte, off int64) error {
	_, err := d.f.WriteAt(buf, off)
	return err
}

// Close closes the file.
func (d *DurableFile) Close() error { return d.f.Close() }
