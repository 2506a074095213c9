package store

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// The free page list. bbolt runs with NoFreelistSync: a commit does not write the list of free
// pages (a page or more per commit, up to 47 pages after retention freed 24k: see
// BenchmarkAppendAuditAfterPrune), and Open rebuilds the list by walking the whole file instead.
// Close writes the list once (syncFreelistAtClose), so after a clean stop Open reads it from its
// page and walks nothing; only the first open after a crash pays the walk (BenchmarkOpenBigDB).
//
// bbolt walks the file for that rebuild on a goroutine of its own, where a damaged page panics in
// a way Open cannot recover from: brokerd would die with a stack trace instead of refusing the file
// with ErrCorrupt. So when the file's freelist is not synced, Open first walks every bucket itself
// (walkAll), on its own goroutine, where a damaged page is a recovered refusal.

// pgidNoFreelist is what a bbolt meta page holds for its freelist page after a NoFreelistSync commit.
const pgidNoFreelist = ^uint64(0)

// freelistSynced reports whether the bbolt file at path names a freelist page in its newest valid
// meta page, i.e. whether bolt.Open will read the free page list rather than walk the file. A file
// that does not exist or has no valid meta page reports true: bbolt creates the one and refuses the
// other without walking.
func freelistSynced(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return true
	}
	defer f.Close()
	// bbolt's meta pages: page 0 at offset 0, page 1 at offset pageSize. Each is a 16-byte page
	// header, then the meta: magic, version, page size, flags (4 bytes each), the root bucket
	// (16), the freelist page id, the high water mark, the txid (8 each), then an FNV-64a
	// checksum of everything before it. Native byte order (bbolt casts the bytes to a struct).
	read := func(off int64) (freelist, txid uint64, pageSize uint32, ok bool) {
		var b [16 + 64]byte
		if _, err := f.ReadAt(b[:], off); err != nil && err != io.EOF {
			return 0, 0, 0, false
		}
		m := b[16:]
		ne := binary.NativeEndian
		h := fnv.New64a()
		h.Write(m[:56])
		if ne.Uint32(m[0:]) != 0xED0CDAED || ne.Uint32(m[4:]) != 2 || ne.Uint64(m[56:]) != h.Sum64() {
			return 0, 0, 0, false
		}
		return ne.Uint64(m[32:]), ne.Uint64(m[48:]), ne.Uint32(m[8:]), true
	}
	fl0, tx0, ps, ok0 := read(0)
	if !ok0 {
		ps = uint32(os.Getpagesize())
	}
	fl1, tx1, _, ok1 := read(int64(ps))
	switch {
	case ok0 && (!ok1 || tx0 >= tx1):
		return fl0 != pgidNoFreelist
	case ok1:
		return fl1 != pgidNoFreelist
	}
	return true
}

// walkAll reads every page of every bucket of the file at path through cursors, in this
// goroutine, so that a page bbolt cannot read panics here (recovered by Open) rather than in
// bbolt's freelist rebuild. It returns bbolt's timeout error if another process holds the file's
// lock; a file bbolt will not open read-only is left to the real open, which refuses it with the
// same error.
func walkAll(path string, lockTimeout time.Duration) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout, OpenFile: openDBFile})
	if errors.Is(err, berrors.ErrTimeout) {
		return err
	}
	if err != nil {
		return nil
	}
	defer db.Close()
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				if nb := b.Bucket(k); nb != nil {
					walk(nb)
				}
			}
		}
	}
	return db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			walk(b)
			return nil
		})
	})
}

// syncFreelistAtClose writes the free page list with one last commit, so the next Open reads it
// instead of walking the file. Nothing else is written. Skipped when the store stopped taking
// writes after a disk error, and when the file's list is still the one Open found (nothing
// committed since: a store opened and closed leaves the file as it was); a failure leaves the list
// unsynced, which the next Open rebuilds.
func (s *Store) syncFreelistAtClose() {
	if s.guard.stopped.Load() || !s.db.NoFreelistSync || (s.syncedTxID != 0 && s.LastTxID() == s.syncedTxID) {
		return
	}
	// Set inside the write transaction: bbolt reads the field in Commit, under the writer lock.
	s.db.Update(func(*bolt.Tx) error {
		s.db.NoFreelistSync = false
		return nil
	})
}
