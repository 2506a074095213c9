package broker_test

// Benchmarks of the broker's hot path without the gRPC edge, through its exported API only, for BENCHMARKS.md
// (scripts/bench.sh runs them):
//
//	go test -run '^$' -bench . -benchmem ./broker
//
// The upstream is an in-memory http.RoundTripper answering with the fake Scavio's bytes, so
// disk-B/op (write_bytes of /proc/self/io per op) counts only what the broker and store write:
// a Search with a token without a use limit must write nothing.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

const (
	benchKey   = "sk_test_BENCH_0123456789abcdef"
	benchQuery = "credbroker benchmark query"
)

var queryCounter atomic.Uint64

// uniqueQuery returns a query not sent before in this process, so the broker's result cache never
// answers it (one allocation per call).
func uniqueQuery() string { return benchQuery + " " + strconv.FormatUint(queryCounter.Add(1), 36) }

type benchUpstream struct{ body []byte }

func (u *benchUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: http.StatusOK, ContentLength: int64(len(u.body)), Request: r,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(u.body))}, nil
}

// benchBroker builds a broker on a durable store in b.TempDir() holding the key and n tokens
// (seeded without fsync), and returns the token strings; tokens[i] has maxUses.
func benchBroker(b *testing.B, n int, maxUses uint64) (*broker.Broker, []string) {
	b.Helper()
	newBroker, toks := benchBrokers(b, n, maxUses)
	return newBroker(), toks
}

// benchBrokers is benchBroker returning a constructor, for benchmarks that need brokers with a
// cold token cache over the same store.
func benchBrokers(b *testing.B, n int, maxUses uint64) (func() *broker.Broker, []string) {
	b.Helper()
	dir := b.TempDir()
	kpath := filepath.Join(dir, "master.json")
	if err := store.NewMasterKeyset(kpath); err != nil {
		b.Fatal(err)
	}
	kek, err := store.LoadMasterKeyset(kpath)
	if err != nil {
		b.Fatal(err)
	}
	db := filepath.Join(dir, "broker.db")
	st, err := store.Open(db, kek, store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	if _, err := st.PutCredential(broker.DefaultCredential, []byte(benchKey), now); err != nil {
		b.Fatal(err)
	}
	toks := make([]string, n)
	for i := range toks {
		tok, id, hash, err := token.New()
		if err != nil {
			b.Fatal(err)
		}
		if err := st.PutToken(store.Token{ID: id, SecretHash: hash[:], Tools: []string{broker.DefaultTool}, CreatedAt: now,
			ExpiresAt: now.Add(time.Hour), MaxUses: maxUses}); err != nil {
			b.Fatal(err)
		}
		toks[i] = tok
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	if st, err = store.Open(db, kek, store.Options{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })

	up, err := upstream.New(upstream.Config{BaseURL: "http://scavio.invalid", HTTPClient: &http.Client{Transport: &benchUpstream{cannedBody(b)}}})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newBroker := func() *broker.Broker {
		br, err := broker.New(broker.Config{Store: st, Upstream: up, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		return br
	}
	return newBroker, toks
}

// cannedBody is the fake Scavio's answer to benchQuery with five results.
func cannedBody(b *testing.B) []byte {
	b.Helper()
	fake := scaviotest.NewUnstartedHandler(benchKey)
	req := httptest.NewRequest(http.MethodPost, scaviotest.SearchPath, strings.NewReader(`{"query":"`+benchQuery+`","num_results":5}`))
	req.Header.Set("x-api-key", benchKey)
	rec := httptest.NewRecorder()
	fake.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("canned request: %d", rec.Code)
	}
	return rec.Body.Bytes()
}

// BenchmarkAuthenticate is the token check of every call. cache-hit is the steady state (parse,
// checksum, SHA-256 of the secret, constant-time compare, expiry); cache-miss is a token's first
// call since start: a bbolt read and a JSON decode on top.
func BenchmarkAuthenticate(b *testing.B) {
	newBroker, toks := benchBrokers(b, 10000, 0)
	ctx := context.Background()
	b.Run("cache-hit", func(b *testing.B) {
		br := newBroker()
		storetest.MeasureDisk(b)
		for b.Loop() {
			if _, err := br.Authenticate(ctx, toks[0], broker.Caller{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache-miss", func(b *testing.B) {
		// Each token is authenticated once per broker: every call is a miss. A fresh broker (cold
		// cache) is built, off the clock, after each pass over the tokens.
		var br *broker.Broker
		storetest.MeasureDisk(b)
		for i := 0; b.Loop(); i++ {
			j := i % len(toks)
			if j == 0 {
				b.StopTimer()
				br = newBroker()
				b.StartTimer()
			}
			if _, err := br.Authenticate(ctx, toks[j], broker.Caller{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTokenCache fills the token cache with distinct tokens and reports the live heap each
// cached token costs (heap-B/token), to size the cache for 100k tokens.
func BenchmarkTokenCache(b *testing.B) {
	const n = 20000
	br, toks := benchBroker(b, n, 0)
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := br.Authenticate(ctx, toks[i%n], broker.Caller{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	cached := min(b.N, n)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(cached), "heap-B/token")
	runtime.KeepAlive(br)
}

// BenchmarkSearch is Broker.Search without the gRPC edge and without the audit record (the edge
// writes that), every call with a new query so it reaches the upstream. unlimited: a token without
// a use limit, which must cost no bbolt write (disk-B/op 0); limited: a use-limited token, whose
// use is counted durably through bbolt's Batch (which waits up to its 10 ms MaxBatchDelay for
// company at c=1); cached: the same query every call, answered by the broker's result cache if it
// has one.
func BenchmarkSearch(b *testing.B) {
	for _, kind := range []string{"unlimited", "limited", "cached"} {
		for _, c := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/c=%d", kind, c), func(b *testing.B) {
				var maxUses uint64
				if kind == "limited" {
					maxUses = 1 << 40
				}
				br, toks := benchBroker(b, 64, maxUses)
				req := func() broker.SearchRequest {
					q := benchQuery
					if kind != "cached" {
						q = uniqueQuery()
					}
					return broker.SearchRequest{Tool: broker.DefaultTool, Query: q}
				}
				ctx := context.Background()
				storetest.MeasureDisk(b)
				if c == 1 {
					for b.Loop() {
						if _, err := br.Search(ctx, toks[0], broker.Caller{}, req()); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism(max(1, c/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for i := 0; pb.Next(); i++ {
						if _, err := br.Search(ctx, toks[i%len(toks)], broker.Caller{}, req()); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// compactToken is a prototype of a smaller token cache entry: what the hot path reads, with the
// tool scope as a bit set over the tool table and times as unix nanoseconds (the full record stays
// in bbolt for the admin API).
type compactToken struct {
	secretHash [32]byte
	expires    int64
	lastUsed   int64
	tools      uint64
	bindUID    uint32
	flags      uint8 // bound, revoked, limited
	rateLimit  uint32
	ratePeriod int64
	limiter    *struct{} // built lazily for rate-limited tokens only
}

// BenchmarkTokenCacheCompact reports the live heap per entry of a cache of compactToken keyed by
// the 8-byte id, to compare with BenchmarkTokenCache's heap-B/token. A prototype measure.
func BenchmarkTokenCacheCompact(b *testing.B) {
	const n = 20000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cache := make(map[[8]byte]*compactToken)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		var id [8]byte
		binary.BigEndian.PutUint64(id[:], uint64(i%n))
		if _, ok := cache[id]; !ok {
			// Every field is set so that the entry has the shape the hot path would fill in.
			cache[id] = &compactToken{secretHash: [32]byte{byte(i)}, expires: int64(i), lastUsed: int64(i),
				tools: 1, bindUID: uint32(i), flags: 1, rateLimit: 10, ratePeriod: int64(time.Minute), limiter: &struct{}{}}
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(len(cache)), "heap-B/token")
	runtime.KeepAlive(cache)
}

// BenchmarkResultCacheHeap runs searches with distinct queries and reports the live heap each one
// leaves behind once the garbage is collected (heap-B/search): with a result cache, what one
// cached answer costs in memory, next to the bytes of the upstream body it came from
// (body-B/search), which is the order of what a byte-bounded cache would account per entry.
func BenchmarkResultCacheHeap(b *testing.B) {
	br, toks := benchBroker(b, 1, 0)
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := br.Search(ctx, toks[0], broker.Caller{}, broker.SearchRequest{Tool: broker.DefaultTool, Query: uniqueQuery()}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/search")
	b.ReportMetric(float64(len(cannedBody(b))), "body-B/search")
	runtime.KeepAlive(br)
}
