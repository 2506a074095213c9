// Package storetest sets up real stores for tests and benchmarks of other packages: a fresh Tink
// master keyset and bbolt file in a temporary directory, closed when the test ends.
package storetest

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/internal/benchdisk"
)

// Open creates a master keyset and a database in dir (t.TempDir() when empty) and opens them.
func Open(tb testing.TB, dir string, opts store.Options) *store.Store {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	kpath := filepath.Join(dir, "master.json")
	if err := store.NewMasterKeyset(kpath); err != nil {
		tb.Fatal(err)
	}
	kek, err := store.LoadMasterKeyset(kpath)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := store.Open(filepath.Join(dir, "broker.db"), kek, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// MeasureDisk reports allocations and disk-B/op for the rest of the benchmark and resets its timer.
func MeasureDisk(b *testing.B) { benchdisk.Measure(b) }

// EditFile replaces every occurrence of old in the file at path with new (same length), in place,
// and returns how many it replaced: what someone with write access to a database file can do to
// it under a running store (bbolt's lock is advisory; its memory map sees the change). Tests of
// the record MACs use it.
func EditFile(tb testing.TB, path string, old, new []byte) int {
	tb.Helper()
	if len(old) != len(new) || len(old) == 0 {
		tb.Fatalf("EditFile: %q and %q must be non-empty and of the same length", old, new)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for off := 0; ; {
		i := bytes.Index(data[off:], old)
		if i < 0 {
			break
		}
		if _, err := f.WriteAt(new, int64(off+i)); err != nil {
			tb.Fatal(err)
		}
		n++
		off += i + len(old)
	}
	return n
}
