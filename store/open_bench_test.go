package store

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/store/internal/benchdisk"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

var (
	bigTokens = flag.Int("big.tokens", 100000, "BenchmarkOpenBigDB: tokens seeded")
	bigAudit  = flag.Int("big.audit", 1000000, "BenchmarkOpenBigDB: audit records seeded")
)

// BenchmarkOpenBigDB is Open on a database of 100k tokens and 1M audit records (page cache warm):
//
//   - freelist-sync=true: every commit writes the free page list (bbolt's default, before issue
//     20); Open reads it.
//   - clean: NoFreelistSync, after a clean Close (which writes the list once); Open reads it.
//   - crashed/TYPE: NoFreelistSync, a copy taken while the store was open (as kill -9 leaves it):
//     Open walks the file twice, once itself (walkAll) and once in bbolt to rebuild the list, with
//     bbolt's array or hashmap freelist.
//
// Run it with
//
//	go test -run '^$' -bench BenchmarkOpenBigDB -benchtime 5x ./store/
func BenchmarkOpenBigDB(b *testing.B) {
	for _, v := range []struct {
		name    string
		sync    bool
		crashed bool
		typ     bolt.FreelistType
	}{
		{"freelist-sync=true", true, false, bolt.FreelistArrayType},
		{"clean", false, false, bolt.FreelistMapType},
		{"crashed/array", false, true, bolt.FreelistArrayType},
		{"crashed/hashmap", false, true, bolt.FreelistMapType},
	} {
		b.Run(v.name, func(b *testing.B) {
			syncFreelist, freelistType = v.sync, v.typ
			defer func() { syncFreelist, freelistType = false, bolt.FreelistMapType }()
			kek, _ := newKEK(b)
			path := filepath.Join(b.TempDir(), "big.db")
			seedBig(b, path, kek, *bigTokens, *bigAudit)
			var crashed []byte
			if v.crashed {
				s, err := Open(path, kek, Options{})
				if err != nil {
					b.Fatal(err)
				}
				if err := s.AppendAudit(context.Background(), searchAudit(0)); err != nil {
					b.Fatal(err)
				}
				if crashed, err = os.ReadFile(path); err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
			fi, _ := os.Stat(path)
			b.ResetTimer()
			for b.Loop() {
				if crashed != nil {
					b.StopTimer()
					if err := os.WriteFile(path, crashed, 0o600); err != nil {
						b.Fatal(err)
					}
					if synced(path) {
						b.Fatal("the crash copy has a synced freelist")
					}
					b.StartTimer()
				}
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

// BenchmarkAppendAuditAfterPrune is a lone audit append (c=1, fsync on) in a database where
// retention freed many pages (200k records written, the oldest 150k pruned): with the freelist
// synced every commit writes the whole free page list; with NoFreelistSync it writes none.
//
//	go test -run '^$' -bench BenchmarkAppendAuditAfterPrune -benchtime 500x ./store/
func BenchmarkAppendAuditAfterPrune(b *testing.B) {
	for _, sync := range []bool{true, false} {
		b.Run(fmt.Sprintf("freelist-sync=%v", sync), func(b *testing.B) {
			syncFreelist = sync
			defer func() { syncFreelist = false }()
			kek, _ := newKEK(b)
			path := filepath.Join(b.TempDir(), "pruned.db")
			seedBig(b, path, kek, 0, 200000)
			s, err := Open(path, kek, Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if n, err := s.PruneAudit(context.Background(), time.Now().Add(time.Hour), 150000); err != nil || n != 150000 {
				b.Fatalf("pruned %d: %v", n, err)
			}
			st := s.db.Stats()
			b.ReportMetric(float64(st.FreePageN+st.PendingPageN), "free-pages")
			benchdisk.Measure(b)
			for i := 0; b.Loop(); i++ {
				if err := s.AppendAudit(context.Background(), searchAudit(i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
