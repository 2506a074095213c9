package store

import bolt "go.etcd.io/bbolt"

// Resident database pages. bbolt reads the file through a shared read-only mmap, and every page a
// read touches stays mapped into brokerd, counted in its RSS (RssFile), until the mapping changes.
// On a fault the kernel also maps the pages around the one touched that are already in the page
// cache ("fault-around", up to 64 KiB), so a thousand token lookups at random keys map about 40 MiB
// of a file the page cache holds whole: with 100k tokens, the cache-missing lookups of a load and
// the scans at start (the integrity check, the process-bound revocation) kept the whole token
// bucket, most of brokerd's RSS, mapped for good.
//
// Dropping the mapping's page table entries (madvise MADV_DONTNEED) loses nothing: the mapping is
// read-only and shared, bbolt writes through the file, and the next read of a dropped page maps
// it again from the page cache (a minor fault, no disk read). So the store drops them after
// every read that walks a whole bucket, and after every trimEvery reads of single records that
// may have mapped cold pages (token cache misses): RssFile stays near the pages read since the
// last trim instead of growing to the file's size.

// trimEvery is how many cold single-record reads (GetToken) are allowed between two trims: with
// fault-around that is at most trimEvery*64 KiB mapped (2 MiB). At 128 the scale run's token
// lookups kept up to 10 MiB of the file mapped, a sixth of the 64 MiB RSS budget. The price is
// mostly the page faults that map the branch pages back after a trim, not the madvise: a random
// GetToken over 60k tokens measured ~18 µs at 32, ~16 µs at 128, ~9 µs never trimming (whole file
// mapped); a Search that misses the token cache costs a few hundred µs.
const trimEvery = 32

// coldRead counts a read of a single record that may have mapped cold pages, and trims the mapping
// every trimEvery of them.
func (s *Store) coldRead() {
	if s.coldReads.Add(1)%trimEvery == 0 {
		s.trimMapped()
	}
}

// trimMapped drops the database mapping's resident pages from brokerd's page tables (see above).
// It runs inside a read transaction, which holds bbolt's mmap lock: the mapping cannot be replaced
// (a growing file is remapped) while it is advised, so the advice never lands on memory that is
// no longer bbolt's.
func (s *Store) trimMapped() {
	s.db.View(func(tx *bolt.Tx) error {
		dropMapped(s.db.Info().Data, uintptr(tx.Size()))
		return nil
	})
}
