// Package storetest sets up real stores for tests and benchmarks of other packages: a fresh Tink
// master keyset and bbolt file in a temporary directory, closed when the test ends.
package storetest

import (
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
