// Package benchdisk measures what a benchmark wrote to storage. It is its own package so that the
// store's in-package benchmarks and storetest (which imports the store) can share it.
package benchdisk

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// WriteBytes is write_bytes from /proc/self/io: the bytes this process caused to reach storage.
func WriteBytes(b *testing.B) int64 {
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

// Measure reports allocations and disk-B/op for the rest of the benchmark and resets its timer.
// 0 disk-B/op proves a path writes nothing.
func Measure(b *testing.B) {
	b.Helper()
	before := WriteBytes(b)
	b.Cleanup(func() {
		if b.N > 0 {
			b.ReportMetric(float64(WriteBytes(b)-before)/float64(b.N), "disk-B/op")
		}
	})
	b.ReportAllocs()
	b.ResetTimer()
}
