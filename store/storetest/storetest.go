// Package storetest sets up real stores for tests and benchmarks of other packages: a fresh Tink
// master keyset and bbolt file in a temporary directory, closed when the test ends.
package storetest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/store"
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

// DiskWriteBytes is write_bytes from /proc/self/io: the bytes this process caused to reach storage.
func DiskWriteBytes(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io")
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	b.Skip("no write_bytes in /proc/self/io")
	return 0
}

// MeasureDisk reports allocations and disk-B/op for the rest of the benchmark and resets its timer.
func MeasureDisk(b *testing.B) {
	b.Helper()
	before := DiskWriteBytes(b)
	b.Cleanup(func() {
		if b.N > 0 {
			b.ReportMetric(float64(DiskWriteBytes(b)-before)/float64(b.N), "disk-B/op")
		}
	})
	b.ReportAllocs()
	b.ResetTimer()
}
