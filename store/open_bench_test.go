package store

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"
)

var (
	bigTokens = flag.Int("big.tokens", 100000, "BenchmarkOpenBigDB: tokens seeded")
	bigAudit  = flag.Int("big.audit", 1000000, "BenchmarkOpenBigDB: audit records seeded")
)

// BenchmarkOpenBigDB is Open on a database of 100k tokens and 1M audit records, with the freelist
// written by every commit (bbolt's default) and without it (NoFreelistSync, what brokerd does: Open
// rebuilds the list by walking every page). Each variant seeds its own file the way it would be
// written, then opens it b.N times (page cache warm).
//
//	go test -run '^$' -bench BenchmarkOpenBigDB -benchtime 5x ./store/
func BenchmarkOpenBigDB(b *testing.B) {
	for _, sync := range []bool{true, false} {
		b.Run(fmt.Sprintf("freelist-sync=%v", sync), func(b *testing.B) {
			syncFreelist = sync
			defer func() { syncFreelist = false }()
			kek, _ := newKEK(b)
			path := filepath.Join(b.TempDir(), "big.db")
			seedBig(b, path, kek, *bigTokens, *bigAudit)
			fi, _ := os.Stat(path)
			b.ResetTimer()
			for b.Loop() {
				s, err := Open(path, kek, Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(fi.Size())/(1<<20), "db-MiB")
		})
	}
}

func seedBig(b *testing.B, path string, kek tink.AEAD, tokens, records int) {
	s, err := Open(path, kek, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	const workers = 256
	for w := range workers {
		wg.Go(func() {
			for i := w; i < tokens; i += workers {
				if err := s.PutToken(testToken(fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15), 0)); err != nil {
					b.Error(err)
					return
				}
			}
			for i := w; i < records; i += workers {
				if err := s.AppendAudit(context.Background(), searchAudit(i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}
