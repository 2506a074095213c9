package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

const tokenCacheKey = "sk_test_TOKENCACHE"

// newCacheBroker returns a broker with a token cache of size cap, a stored key and a fake clock.
func newCacheBroker(t *testing.T, cap int) (*Broker, *clocktest.Fake) {
	t.Helper()
	st := storetest.Open(t, t.TempDir(), store.Options{})
	fake := scaviotest.NewServer(tokenCacheKey)
	t.Cleanup(func() { st.Close(); fake.Close() })
	up, err := upstream.New(upstream.Config{BaseURL: fake.URL, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	b, err := New(Config{Store: st, Upstream: up, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: clk.Now, Clock: clk, TokenCacheSize: cap})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutCredential("scavio_api_key", []byte(tokenCacheKey), clk.Now()); err != nil {
		t.Fatal(err)
	}
	return b, clk
}

func mintFor(t *testing.T, b *Broker, r MintRequest) (string, store.Token) {
	t.Helper()
	if r.Tools == nil {
		r.Tools = []string{"web_search"}
	}
	if r.TTL == 0 {
		r.TTL = time.Hour
	}
	raw, rec, err := b.MintToken(context.Background(), r, Caller{Known: true})
	if err != nil {
		t.Fatal(err)
	}
	return raw, rec
}

var me = Caller{Known: true}

// The cache stays at its bound however many tokens are used, and an evicted token still works,
// keeps its last use for `token inspect`, and is still refused once revoked.
func TestTokenCacheIsBounded(t *testing.T) {
	b, clk := newCacheBroker(t, 4)
	var raws []string
	var ids []string
	for i := range 12 {
		raw, rec := mintFor(t, b, MintRequest{})
		raws, ids = append(raws, raw), append(ids, rec.ID)
		clk.Advance(time.Second)
		if _, err := b.Authenticate(context.Background(), raw, me); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		b.lookupTokenMust(t, rec.ID).touch(clk.Now())
		if n := b.cachedTokens(); n > 4 {
			t.Fatalf("after %d tokens, %d cached; bound is 4", i+1, n)
		}
	}
	first := ids[0]
	b.mu.RLock()
	_, cached := b.tokens[first]
	b.mu.RUnlock()
	if cached {
		t.Fatal("the least recently used token is still cached with 12 tokens and room for 4")
	}
	d, err := b.GetToken(context.Background(), first)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 26, 12, 0, 1, 0, time.UTC); !d.LastUsed.Equal(want) {
		t.Fatalf("evicted token's last use = %v, want %v", d.LastUsed, want)
	}
	if _, err := b.RevokeToken(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Authenticate(context.Background(), raws[0], me); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked evicted token: %v", err)
	}
	for i, raw := range raws[1:] { // every other token still works after falling out
		if _, err := b.Authenticate(context.Background(), raw, me); err != nil {
			t.Fatalf("token %d after eviction: %v", i+1, err)
		}
	}
}

// lookupTokenMust is lookupToken for tests.
func (b *Broker) lookupTokenMust(t *testing.T, id string) *tokenState {
	t.Helper()
	st, err := b.lookupToken(id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A token whose rate limit is still recovering is never evicted, so cycling through other tokens
// cannot reset its limit; once it has recovered it may go.
func TestTokenCacheKeepsRateLimitedTokens(t *testing.T) {
	b, clk := newCacheBroker(t, 2)
	limited, rec := mintFor(t, b, MintRequest{RateLimit: 2, RatePeriod: time.Minute})
	ctx := context.Background()
	for range 2 {
		if _, err := b.Search(ctx, limited, me, SearchRequest{Query: "q"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 { // churn the cache
		raw, _ := mintFor(t, b, MintRequest{})
		if _, err := b.Authenticate(ctx, raw, me); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Search(ctx, limited, me, SearchRequest{Query: "q2"}); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third call within the minute after cache churn: %v, want rate limited", err)
	}
	clk.Advance(2 * time.Minute) // refilled: now it is idle and may be evicted
	for range 10 {
		raw, _ := mintFor(t, b, MintRequest{})
		if _, err := b.Authenticate(ctx, raw, me); err != nil {
			t.Fatal(err)
		}
	}
	b.mu.RLock()
	_, cached := b.tokens[rec.ID]
	n := len(b.tokens)
	b.mu.RUnlock()
	if cached || n > 2 {
		t.Fatalf("recovered token cached=%v, cache size %d (bound 2)", cached, n)
	}
	if _, err := b.Search(ctx, limited, me, SearchRequest{Query: "q3"}); err != nil {
		t.Fatalf("after its limit recovered: %v", err)
	}
}

// A revoke that lands while another call is loading the same token from bbolt must win: the
// loader must not cache the record it read before the revoke.
func TestRevokeRacingATokenLoad(t *testing.T) {
	b, _ := newCacheBroker(t, 100)
	ctx := context.Background()
	raw, rec := mintFor(t, b, MintRequest{})
	var once sync.Once
	testHookTokenRead = func(id string) { // the revoke completes after the load read the live record
		once.Do(func() {
			if _, err := b.RevokeToken(ctx, id); err != nil {
				t.Error(err)
			}
		})
	}
	defer func() { testHookTokenRead = nil }()
	_, err := b.Authenticate(ctx, raw, me)
	if !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("call racing the revoke: %v, want refused (it reads again after the revoke)", err)
	}
	if _, err := b.Authenticate(ctx, raw, me); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked token %s accepted after a racing load: %v", rec.ID, err)
	}
}

// A call that looked a rate-limited token up just before a cache miss evicted its state must be
// charged to the state every later call sees, not to the orphaned one: otherwise racing
// evictions would let through up to twice the limit.
func TestEvictedStateIsNotChargedAlone(t *testing.T) {
	b, _ := newCacheBroker(t, 100)
	_, rec := mintFor(t, b, MintRequest{RateLimit: 2, RatePeriod: time.Minute})
	held := b.lookupTokenMust(t, rec.ID) // a call is between lookup and allow...
	b.mu.Lock()                          // ...when a miss evicts the (still idle) state
	if !held.evict(b.now()) {
		b.mu.Unlock()
		t.Fatal("an unused rate-limited token is idle and may be evicted")
	}
	delete(b.tokens, rec.ID)
	b.mu.Unlock()
	for i := range 2 {
		if _, err := b.allowCall(held); err != nil {
			t.Fatalf("call %d within the limit: %v", i+1, err)
		}
	}
	if _, err := b.allowCall(b.lookupTokenMust(t, rec.ID)); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third call in the minute: %v, want rate limited (the held calls were charged to a forgotten limiter)", err)
	}
}

// Evicted tokens' last uses are kept only until the tokens expire, so the side table does not
// grow with every token ever used; use-limited tokens keep theirs in bbolt and are not in it.
func TestLastUseTableForgetsExpiredTokens(t *testing.T) {
	b, clk := newCacheBroker(t, 2)
	ctx := context.Background()
	use := func(r MintRequest) string {
		raw, rec := mintFor(t, b, r)
		if _, err := b.Authenticate(ctx, raw, me); err != nil {
			t.Fatal(err)
		}
		b.lookupTokenMust(t, rec.ID).touch(clk.Now())
		clk.Advance(time.Second)
		return rec.ID
	}
	var short []string
	for range 10 {
		short = append(short, use(MintRequest{TTL: time.Minute}))
	}
	limited := use(MintRequest{TTL: time.Hour, MaxUses: 5})
	use(MintRequest{TTL: time.Hour}) // pushes the limited one out
	use(MintRequest{TTL: time.Hour})
	b.mu.RLock()
	limitedKept, shortKept := b.remembersLastUse(limited), b.remembersLastUse(short[0])
	b.mu.RUnlock()
	if limitedKept || !shortKept {
		t.Fatalf("side table: use-limited token kept=%v (its last use is in bbolt), evicted unlimited token kept=%v", limitedKept, shortKept)
	}
	if d, err := b.GetToken(ctx, short[0]); err != nil || d.LastUsed.IsZero() {
		t.Fatalf("evicted token's last use: %v %v", d.LastUsed, err)
	}
	clk.Advance(2 * time.Minute) // every minute-long token has expired
	for range 30 {
		use(MintRequest{TTL: time.Hour})
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, id := range short {
		if b.remembersLastUse(id) {
			t.Fatalf("last use of expired token %s still kept (%d entries)", id, len(b.lastUsed))
		}
	}
	if n := len(b.lastUsed); n > 32 {
		t.Fatalf("%d entries for 32 live evicted tokens", n)
	}
}

// The token cache is keyed by a copy of the token id, not by the id's slice of the bearer string
// the caller sent: that string holds the secret and is ~100 bytes, and a cached token would keep
// it alive (the last-use table's keys are bytes, not strings). With 100k tokens used, cached and
// remembered, that was 11 MB of heap.
func TestTokenCacheKeyDoesNotPinTheBearerString(t *testing.T) {
	b, _ := newCacheBroker(t, 1)
	ctx := context.Background()
	var raws []string
	for range 2 { // the second use evicts the first token into the last-use table
		raw, rec := mintFor(t, b, MintRequest{})
		raw = "Bearer " + raw // a fresh string, as a header decoder hands it over
		raws = append(raws, raw)
		st, err := b.authenticate(ctx, strings.TrimPrefix(raw, "Bearer "), me)
		if err != nil {
			t.Fatal(err)
		}
		st.touch(b.now())
		if st.record().ID != rec.ID {
			t.Fatalf("cached id %s, want %s", st.record().ID, rec.ID)
		}
	}
	within := func(key, raw string) bool {
		k, r := uintptr(unsafe.Pointer(unsafe.StringData(key))), uintptr(unsafe.Pointer(unsafe.StringData(raw)))
		return k >= r && k < r+uintptr(len(raw))
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if len(b.tokens) != 1 || len(b.lastUsed) != 1 {
		t.Fatalf("%d cached, %d remembered; want 1 and 1", len(b.tokens), len(b.lastUsed))
	}
	for _, raw := range raws {
		for id := range b.tokens {
			if within(id, raw) {
				t.Fatalf("token cache key %s points into the caller's bearer string", id)
			}
		}
	}
}

// remembersLastUse reports whether the last-use table holds token id. Called with b.mu held.
func (b *Broker) remembersLastUse(id string) bool {
	k, ok := lastUseKeyOf(id)
	if !ok {
		return false
	}
	_, ok = b.lastUsed[k]
	return ok
}

// lastUseKeyOf is the id's bytes, and refuses what is not a token id.
func TestLastUseKeyOf(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want lastUseKey
		ok   bool
	}{
		{"0123456789abcdef", lastUseKey{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}, true},
		{"ffffffffffffffff", lastUseKey{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, true},
		{"0123456789ABCDEF", lastUseKey{}, false}, // would alias the lowercase id
		{"0123456789abcde", lastUseKey{}, false},
		{"0123456789abcdefa", lastUseKey{}, false},
		{"0123456789abcdeg", lastUseKey{}, false},
		{"", lastUseKey{}, false},
	} {
		got, ok := lastUseKeyOf(tc.id)
		if ok != tc.ok || got != tc.want {
			t.Errorf("lastUseKeyOf(%q) = %x, %v; want %x, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

// BenchmarkLastUseTable reports the live heap per entry of a last-use table the size of the
// scale run's (90k evicted tokens), keyed as brokerd keys it (bytes) and as it used to (a
// string per id): see lastUseKey.
func BenchmarkLastUseTable(b *testing.B) {
	const n = 90000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15)
	}
	measure := func(b *testing.B, fill func() any) {
		var before, after runtime.MemStats
		for b.Loop() {
			runtime.GC()
			runtime.ReadMemStats(&before)
			m := fill()
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(m)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/entry")
	}
	b.Run("bytes", func(b *testing.B) {
		measure(b, func() any {
			m := map[lastUseKey]lastUse{}
			for i, id := range ids {
				k, _ := lastUseKeyOf(id)
				m[k] = lastUse{at: int64(i), expires: int64(i)}
			}
			return m
		})
	})
	b.Run("string", func(b *testing.B) {
		measure(b, func() any {
			m := map[string]lastUse{}
			for i, id := range ids {
				m[strings.Clone(id)] = lastUse{at: int64(i), expires: int64(i)}
			}
			return m
		})
	})
}
