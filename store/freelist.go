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

// boltMeta is what Open reads of the newest valid meta page of a bbolt file before bbolt does.
type boltMeta struct {
	freelist uint64 // the freelist page, or pgidNoFreelist
	pages    uint64 // the high water mark: pages 0 to pages-1 are the file's
	pageSize uint32
	fileSize int64
}

// readBoltMeta reads the newest valid meta page of the bbolt file at path; ok is false if the file
// does not exist, cannot be read or has no valid meta page (bbolt then creates it or refuses it).
func readBoltMeta(path string) (m boltMeta, ok bool) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return m, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return m, false
	}
	// bbolt's meta pages: page 0 at offset 0, page 1 at offset pageSize. Each is a 16-byte page
	// header, then the meta: magic, version, page size, flags (4 bytes each), the root bucket
	// (16), the freelist page id, the high water mark, the txid (8 each), then an FNV-64a
	// checksum of everything before it. Native byte order (bbolt casts the bytes to a struct).
	read := func(off int64) (boltMeta, uint64, bool) {
		var b [16 + 64]byte
		if _, err := f.ReadAt(b[:], off); err != nil && err != io.EOF {
			return boltMeta{}, 0, false
		}
		mb := b[16:]
		ne := binary.NativeEndian
		h := fnv.New64a()
		h.Write(mb[:56])
		if ne.Uint32(mb[0:]) != 0xED0CDAED || ne.Uint32(mb[4:]) != 2 || ne.Uint64(mb[56:]) != h.Sum64() {
			return boltMeta{}, 0, false
		}
		return boltMeta{freelist: ne.Uint64(mb[32:]), pages: ne.Uint64(mb[40:]), pageSize: ne.Uint32(mb[8:]), fileSize: fi.Size()},
			ne.Uint64(mb[48:]), true
	}
	m0, tx0, ok0 := read(0)
	ps := m0.pageSize
	if !ok0 {
		ps = uint32(os.Getpagesize())
	}
	m1, tx1, ok1 := read(int64(ps))
	switch {
	case ok0 && (!ok1 || tx0 >= tx1):
		return m0, true
	case ok1:
		return m1, true
	}
	return m, false
}

// synced reports whether the meta names a freelist page: bolt.Open reads the free page list from
// it rather than walking the file.
func (m boltMeta) synced() bool { return m.freelist != pgidNoFreelist }

// truncated reports whether the file is shorter than the pages its meta says it holds. bbolt
// would read the missing pages through its mmap, a fault that kills the process (not a panic
// Open can recover from), wherever a page it needs lies past the end. A file of less than its two
// meta pages is left to bbolt, which refuses it ("file size too small").
func (m boltMeta) truncated() bool {
	return m.pageSize > 0 && m.fileSize >= 2*int64(m.pageSize) && m.pages > uint64(m.fileSize)/uint64(m.pageSize)
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
	// With NoSync (benchmarks only) the list would not be fsynced, and a meta page naming an
	// unwritten list corrupts silently after a power loss: leave it to the next Open's walk.
	if s.guard.stopped.Load() || !s.db.NoFreelistSync || s.db.NoSync || (s.syncedTxID != 0 && s.LastTxID() == s.syncedTxID) {
		return
	}
	// Set inside the write transaction: bbolt reads the field in Commit, under the writer lock.
	s.db.Update(func(*bolt.Tx) error {
		s.db.NoFreelistSync = false
		return nil
	})
}
