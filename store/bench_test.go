package store

// Benchmarks of the store's hot paths, for BENCHMARKS.md (scripts/bench.sh runs them):
//
//	go test -run '^$' -bench . -benchmem ./store
//
// The database lives in b.TempDir(), on the same file system as a real one would, and commits are
// durable unless a name says nosync. disk-B/op is what the process wrote to storage per op
// (write_bytes in /proc/self/io): 0 proves a path writes nothing.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/store/internal/benchdisk"
)

func benchKEK(b *testing.B) tink.AEAD {
	b.Helper()
	path := filepath.Join(b.TempDir(), "master.json")
	if err := NewMasterKeyset(path); err != nil {
		b.Fatal(err)
	}
	kek, err := LoadMasterKeyset(path)
	if err != nil {
		b.Fatal(err)
	}
	return kek
}

func benchStore(b *testing.B, opts Options) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "broker.db"), benchKEK(b), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func benchToken(i int) Token {
	id := fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15)
	h := make([]byte, 32)
	copy(h, id)
	return Token{ID: id, SecretHash: h, Tools: []string{"web_search"}, CreatedAt: t0, ExpiresAt: t0.Add(24 * time.Hour), Label: "bench"}
}

// seedTokens puts n tokens without fsync and reopens the store durable.
func seedTokens(b *testing.B, n int) (*Store, []string) {
	b.Helper()
	kek := benchKEK(b)
	path := filepath.Join(b.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i := range n {
		t := benchToken(i)
		if err := s.PutToken(t); err != nil {
			b.Fatal(err)
		}
		ids[i] = t.ID
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if s, err = Open(path, kek, Options{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s, ids
}

// BenchmarkGetToken is a token cache miss in the broker: a bbolt read transaction and a JSON decode.
func BenchmarkGetToken(b *testing.B) {
	s, ids := seedTokens(b, 10000)
	benchdisk.Measure(b)
	for i := 0; b.Loop(); i++ {
		if _, err := s.GetToken(ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadCredential is what every Search pays for its key: a bbolt read transaction, two
// JSON decodes and an AES-256-GCM decrypt with the primitive built at Open.
func BenchmarkLoadCredential(b *testing.B) {
	s := benchStore(b, Options{})
	if _, err := s.PutCredential("scavio_api_key", []byte("sk_test_0123456789abcdef0123456789abcdef"), t0); err != nil {
		b.Fatal(err)
	}
	benchdisk.Measure(b)
	for b.Loop() {
		v, _, err := s.LoadCredential("scavio_api_key")
		if err != nil {
			b.Fatal(err)
		}
		clear(v)
	}
}

// BenchmarkAEADDecrypt is the part of LoadCredential that must happen per call: a Tink
// AES-256-GCM decrypt of a 40-byte key with its slot as associated data. The rest of
// LoadCredential (a read transaction and two JSON decodes) could be skipped by keeping each
// credential's current ciphertext and version in memory, updated by the writes this process makes
// (only brokerd writes its database).
func BenchmarkAEADDecrypt(b *testing.B) {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		b.Fatal(err)
	}
	aad := []byte("credential/scavio_api_key/1")
	ct, err := a.Encrypt([]byte("sk_test_0123456789abcdef0123456789abcdef"), aad)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		v, err := a.Decrypt(ct, aad)
		if err != nil {
			b.Fatal(err)
		}
		clear(v)
	}
}

// BenchmarkBuildDataAEAD is what LoadCredential would cost on top if it parsed and unwrapped the
// data keyset per call instead of using the primitive built once at Open.
func BenchmarkBuildDataAEAD(b *testing.B) {
	kek := benchKEK(b)
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	aad := []byte("credbroker/data-keyset")
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, aad); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), kek, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := aead.New(h); err != nil {
			b.Fatal(err)
		}
	}
}

func searchAudit(i int) AuditRecord {
	return AuditRecord{Time: time.Now(), PeerKnown: true, UID: 1000, GID: 1000, PID: 4242, TokenID: "0123456789abcdef",
		Method: "/credbroker.v1.SearchService/Search", Tool: "web_search", Code: "OK", LatencyMicros: int64(300 + i%100),
		Credential: "scavio_api_key", CredentialVersion: 1, QueryLen: 26, QueryMAC: "00112233445566778899aabbccddeeff"}
}

// parallel runs fn from conc goroutines (conc is rounded to a multiple of GOMAXPROCS).
func parallel(b *testing.B, conc int, fn func(i int)) {
	b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			fn(int(n.Add(1)))
		}
	})
}

// BenchmarkAppendAudit is the audit record every call makes durable before it returns. At c=1 each
// append is its own commit; concurrent appends share one (group commit in store/audit.go).
func BenchmarkAppendAudit(b *testing.B) {
	ctx := context.Background()
	// sync: as brokerd runs (records in the audit journal, checkpointed into bbolt); bbolt: every
	// group a bbolt transaction, as before the journal (Options.NoJournal); nosync: neither syncs.
	for _, mode := range []string{"sync", "bbolt", "nosync"} {
		for _, c := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", mode, c), func(b *testing.B) {
				s := benchStore(b, Options{NoSync: mode == "nosync", NoJournal: mode == "bbolt"})
				benchdisk.Measure(b)
				if c == 1 {
					for i := 0; b.Loop(); i++ {
						if err := s.AppendAudit(ctx, searchAudit(i)); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				parallel(b, c, func(i int) {
					if err := s.AppendAudit(ctx, searchAudit(i)); err != nil {
						b.Error(err)
					}
				})
			})
		}
	}
}

// BenchmarkPutToken is MintToken's write. "update" is PutToken as built (Store.batch: a plain
// Update when no other batched write is in flight, bbolt's DB.Batch when there is); "batch" is
// the same write always through DB.Batch (a lone writer waits MaxBatchDelay); "group" through a
// group-commit writer like the audit log's (drain what is queued, one transaction, no timer).
// batch and group are prototypes here, not store code.
func BenchmarkPutToken(b *testing.B) {
	for _, how := range []string{"update", "batch", "group"} {
		for _, c := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/c=%d", how, c), func(b *testing.B) {
				s := benchStore(b, Options{})
				put := s.PutToken
				switch how {
				case "batch":
					put = func(t Token) error { return putTokenBatch(s, t) }
				case "group":
					g := newGroupWriter(s.db)
					b.Cleanup(g.close)
					put = func(t Token) error { return putTokenGroup(g, t) }
				}
				var seq atomic.Int64
				seq.Store(int64(c) << 40) // distinct ids per sub-benchmark run
				benchdisk.Measure(b)
				if c == 1 {
					for b.Loop() {
						if err := put(benchToken(int(seq.Add(1)))); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				parallel(b, c, func(int) {
					if err := put(benchToken(int(seq.Add(1)))); err != nil {
						b.Error(err)
					}
				})
			})
		}
	}
}

// BenchmarkUseToken is the durable use count of a use-limited token (Store.batch: bbolt's Batch
// when calls are concurrent, a plain Update, with no batching delay, when one is alone).
func BenchmarkUseToken(b *testing.B) {
	for _, c := range []int{1, 32} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			s := benchStore(b, Options{})
			ids := make([]string, 64)
			for i := range ids {
				t := benchToken(i)
				t.MaxUses = 1 << 40
				if err := s.PutToken(t); err != nil {
					b.Fatal(err)
				}
				ids[i] = t.ID
			}
			benchdisk.Measure(b)
			if c == 1 {
				for b.Loop() {
					if _, err := s.UseToken(ids[0], t0); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			parallel(b, c, func(i int) {
				if _, err := s.UseToken(ids[i%len(ids)], t0); err != nil {
					b.Error(err)
				}
			})
		})
	}
}

// putTokenBatch is PutToken through DB.Batch. fn only reads and puts its own key, so a re-run
// (after another fn in the batch failed) is harmless; ErrExists makes Batch re-run it alone,
// where it fails alone.
func putTokenBatch(s *Store, t Token) error {
	raw, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error { return putTokenTx(tx, t.ID, raw) })
}

func putTokenTx(tx *bolt.Tx, id string, raw []byte) error {
	b := tx.Bucket(bucketTokens)
	if b.Get([]byte(id)) != nil {
		return fmt.Errorf("token %s: %w", id, ErrExists)
	}
	return b.Put([]byte(id), raw)
}

// groupWriter is the audit writer's group commit, generalised: one goroutine takes whatever
// writes are queued and commits them in one transaction; a failing write is retried alone so it
// cannot fail the others.
type groupWriter struct {
	db   *bolt.DB
	reqs chan groupReq
	wg   sync.WaitGroup
}

type groupReq struct {
	fn   func(*bolt.Tx) error
	done chan error
}

func newGroupWriter(db *bolt.DB) *groupWriter {
	g := &groupWriter{db: db, reqs: make(chan groupReq, 1024)}
	g.wg.Go(g.run)
	return g
}

func (g *groupWriter) close() { close(g.reqs); g.wg.Wait() }

func (g *groupWriter) run() {
	for first := range g.reqs {
		batch := []groupReq{first}
	drain:
		for len(batch) < 512 {
			select {
			case r, ok := <-g.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		var failed []groupReq
		err := g.db.Update(func(tx *bolt.Tx) error {
			for _, r := range batch {
				if err := r.fn(tx); err != nil {
					// bbolt cannot roll back one fn: fail the transaction, retry the rest.
					failed = append(failed, r)
					return err
				}
			}
			return nil
		})
		if err == nil {
			for _, r := range batch {
				r.done <- nil
			}
			continue
		}
		for _, r := range batch { // rare: rerun each alone
			r.done <- g.db.Update(r.fn)
		}
		_ = failed
	}
}

func (g *groupWriter) do(fn func(*bolt.Tx) error) error {
	done := make(chan error, 1)
	g.reqs <- groupReq{fn: fn, done: done}
	return <-done
}

func putTokenGroup(g *groupWriter, t Token) error {
	raw, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return g.do(func(tx *bolt.Tx) error { return putTokenTx(tx, t.ID, raw) })
}

// BenchmarkBoltAppend is bbolt alone doing what the audit writer does at c=1: one durable
// transaction per ~400-byte record appended under a sequential key, plus a small "head" value in
// another bucket. "default" is how store.Open opens bbolt; "nofreelistsync" adds NoFreelistSync
// with the hashmap freelist (etcd's settings), which stops writing the freelist page(s) on every
// commit (the freelist is rebuilt by scanning at open instead). A prototype measure.
func BenchmarkBoltAppend(b *testing.B) {
	for _, mode := range []string{"default", "nofreelistsync"} {
		b.Run(mode, func(b *testing.B) {
			opts := &bolt.Options{Timeout: time.Second}
			if mode == "nofreelistsync" {
				opts.NoFreelistSync, opts.FreelistType = true, bolt.FreelistMapType
			}
			db, err := bolt.Open(filepath.Join(b.TempDir(), "bolt.db"), 0o600, opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			val := make([]byte, 400)
			benchdisk.Measure(b)
			for i := 0; b.Loop(); i++ {
				err := db.Update(func(tx *bolt.Tx) error {
					bk, err := tx.CreateBucketIfNotExists([]byte("audit"))
					if err != nil {
						return err
					}
					if err := bk.Put(binary.BigEndian.AppendUint64(nil, uint64(i+1)), val); err != nil {
						return err
					}
					m, err := tx.CreateBucketIfNotExists([]byte("meta"))
					if err != nil {
						return err
					}
					return m.Put([]byte("head"), val[:48])
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRecordVerify is what record MACs add to every token cache miss (BenchmarkGetToken):
// one HMAC-SHA256 verify of a sealed token record.
func BenchmarkRecordVerify(b *testing.B) {
	s := benchStore(b, Options{})
	body, err := json.Marshal(benchToken(1))
	if err != nil {
		b.Fatal(err)
	}
	key := []byte(benchToken(1).ID)
	sealed, err := s.seal(tokensSlot(), key, body)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, _, err := s.openSealed(tokensSlot(), key, sealed); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckIntegrity is the start-up pass over every record (Open runs it): verify each
// record's MAC and compare its audit stamp with the chain head.
func BenchmarkCheckIntegrity(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			s := benchStore(b, Options{NoSync: true})
			for start := 0; start < n; start += 10_000 {
				if err := s.db.Update(func(tx *bolt.Tx) error {
					for i := start; i < min(start+10_000, n); i++ {
						t := benchToken(i)
						body, err := json.Marshal(t)
						if err != nil {
							return err
						}
						if err := s.putNewToken(tx, t.ID, body, 0); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				r, err := s.CheckIntegrity()
				if err != nil || !r.OK() || r.Records != n {
					b.Fatalf("%+v %v", r, err)
				}
			}
		})
	}
}
