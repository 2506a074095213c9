package broker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// DefaultTokenCacheSize is how many tokens the broker keeps decoded in memory unless configured:
// more than the MCP servers of a busy machine hold at once. A token that falls out is read from
// bbolt again on its next use (one read, no write).
const DefaultTokenCacheSize = 10000

// evictSample is how many cached tokens an eviction compares; the least recently used of them
// goes (sampled LRU, as Redis does: no list to maintain on the hot path).
const evictSample = 8

// maxEvictPerLoad bounds the evictions one cache miss performs, so a cache that grew past its
// bound (rate-limited tokens are never dropped mid-limit) shrinks back a little per miss instead
// of stalling every reader behind one long sweep.
const maxEvictPerLoad = 2

// tokenState is what the broker keeps in memory about a token: its record, its rate limiter and
// when it was last used (durable only for use-limited tokens, whose uses are written anyway).
type tokenState struct {
	rec      atomic.Pointer[store.Token]
	lastUsed atomic.Int64 // unix nanos, 0 = not since start
	loadedAt int64        // unix nanos; with lastUsed, the recency eviction goes by

	// mu guards the rate limiter and evicted, so a state is never dropped between a call's lookup
	// and its spending a unit of the limit: that call would spend from a limiter nobody else sees
	// while new calls start from a full one. Tokens without a rate limit never take it.
	mu      sync.Mutex
	lim     *rate.Limiter
	evicted bool
}

// recency is when the token was last used or loaded, whichever is later.
func (s *tokenState) recency() int64 { return max(s.lastUsed.Load(), s.loadedAt) }

func (s *tokenState) record() *store.Token { return s.rec.Load() }

func (s *tokenState) touch(now time.Time) { s.lastUsed.Store(now.UnixNano()) }

// rateLimited reports whether the token has a per-token rate limit.
func (s *tokenState) rateLimited() bool {
	t := s.record()
	return t.RateLimit > 0 && t.RatePeriod > 0
}

// errEvicted: the state left the cache; look the token up again.
var errEvicted = errors.New("token state evicted")

// allow spends one call of the token's rate limit, or says how long to wait.
func (s *tokenState) allow(now time.Time) error {
	if !s.rateLimited() {
		return nil
	}
	t := s.record()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.evicted {
		return errEvicted
	}
	if s.lim == nil {
		s.lim = rate.NewLimiter(rate.Every(t.RatePeriod/time.Duration(t.RateLimit)), int(t.RateLimit))
	}
	r := s.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return refusal(ReasonRateLimited, d, fmt.Errorf("%w: token %s is limited to %d calls per %s; retry in %s",
			ErrRateLimited, t.ID, t.RateLimit, t.RatePeriod, d.Round(time.Millisecond)))
	}
	return nil
}

// ErrRateLimited reports a token over its own rate limit (not the upstream's).
var ErrRateLimited = errors.New("rate limited")

// allowCall is allow for a call holding st, which a concurrent cache miss may have evicted: then
// the token is looked up again and its fresh state (whose limiter starts full, as the evicted
// one was) is charged instead. It returns the state it charged.
func (b *Broker) allowCall(st *tokenState) (*tokenState, error) {
	for {
		err := st.allow(b.now())
		if !errors.Is(err, errEvicted) {
			return st, err
		}
		if st, err = b.lookupToken(st.record().ID); err != nil {
			return nil, err
		}
	}
}

// idle reports whether forgetting s loses nothing a bbolt read cannot give back: it has no rate
// limiter, or its limiter has refilled (a new one starts full, too).
func (s *tokenState) idle(now time.Time) bool {
	if !s.rateLimited() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idleLocked(now)
}

func (s *tokenState) idleLocked(now time.Time) bool {
	return s.lim == nil || s.lim.TokensAt(now) >= float64(s.lim.Burst())
}

// evict marks s as gone if it is idle; a rate-limited state's allow sees the mark and re-looks
// the token up. Called with b.mu held.
func (s *tokenState) evict(now time.Time) bool {
	if !s.rateLimited() {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.idleLocked(now) { // a call spent from it since it was sampled
		return false
	}
	s.evicted = true
	return true
}

// lookupToken returns the cached state for id, loading it on a miss.
func (b *Broker) lookupToken(id string) (*tokenState, error) {
	for {
		b.mu.RLock()
		st, ok := b.tokens[id]
		gen := b.tokenGen
		b.mu.RUnlock()
		if ok {
			return st, nil
		}
		rec, err := b.store.GetToken(id)
		if err != nil {
			return nil, err
		}
		if testHookTokenRead != nil {
			testHookTokenRead(id)
		}
		b.mu.Lock()
		if st, ok := b.tokens[id]; ok { // another caller loaded it first
			b.mu.Unlock()
			return st, nil
		}
		if b.tokenGen != gen {
			// A revoke finished between our read and now; what we read may predate it.
			b.mu.Unlock()
			continue
		}
		// id is usually a slice of the caller's whole bearer string (token.Parse), which holds the
		// secret: as a map key it would keep that string (and the secret) alive for as long as
		// the token stays cached, ~100 bytes a token. Key by a copy of the id.
		id = strings.Clone(id)
		now := b.now()
		b.evictLocked(now)
		st = &tokenState{loadedAt: now.UnixNano()}
		st.rec.Store(&rec)
		if k, ok := lastUseKeyOf(id); ok {
			if u, ok := b.lastUsed[k]; ok {
				st.lastUsed.Store(u.at)
				delete(b.lastUsed, k)
			}
		}
		b.tokens[id] = st
		b.mu.Unlock()
		return st, nil
	}
}

// testHookTokenRead, when set by a test, runs between a token's bbolt read and its caching.
var testHookTokenRead func(id string)

// evictLocked makes room for one more token: while the cache is full it drops the least
// recently used idle token of a random sample (map iteration starts at a random place), at most
// maxEvictPerLoad of them. If the whole sample is mid-rate-limit the cache grows instead, so no
// limit is ever forgotten. A call already holding an evicted state finishes with it (a
// rate-limited one re-looks the token up first, see allowCall); its last-use time may be lost.
func (b *Broker) evictLocked(now time.Time) {
	for range maxEvictPerLoad {
		if len(b.tokens) < b.tokenCap {
			return
		}
		var (
			victimID string
			victim   *tokenState
			seen     int
		)
		for id, st := range b.tokens {
			if st.idle(now) && (victim == nil || st.recency() < victim.recency()) {
				victimID, victim = id, st
			}
			if seen++; seen == evictSample {
				break
			}
		}
		if victim == nil || !victim.evict(now) {
			return
		}
		delete(b.tokens, victimID)
		t := victim.record()
		// Use-limited tokens have their last use in bbolt; keep the others' for token inspect,
		// until the token expires.
		if n := victim.lastUsed.Load(); n != 0 && t.MaxUses == 0 {
			if k, ok := lastUseKeyOf(victimID); ok {
				b.lastUsed[k] = lastUse{at: n, expires: t.ExpiresAt.UnixNano()}
				b.pruneLastUsedLocked(now)
			}
		}
	}
}

// lastUse is an evicted token's last use, kept until the token expires.
type lastUse struct{ at, expires int64 }

// lastUseKey is a token id as the 8 bytes its 16 hex digits spell. The last-use table may hold
// an entry for every live token that was ever used (90k in the scale run): a fixed-size key needs
// no string per entry and makes a map slot 24 bytes instead of 32, 39 instead of 74 bytes of live
// heap an entry (BenchmarkLastUseTable), 3.5 MB instead of 6.7 MB for 90k.
type lastUseKey [8]byte

// lastUseKeyOf returns id's key; false if id is not a token id (token.ValidID), which no stored
// token has: such an id is simply never remembered.
func lastUseKeyOf(id string) (lastUseKey, bool) {
	var k lastUseKey
	if !token.ValidID(id) {
		return k, false
	}
	if _, err := hex.Decode(k[:], []byte(id)); err != nil {
		return k, false
	}
	return k, true
}

// pruneLastUsedLocked drops the last uses of expired tokens once the map has doubled since the
// last sweep, so it holds at most about twice the live tokens that were used and evicted.
func (b *Broker) pruneLastUsedLocked(now time.Time) {
	if len(b.lastUsed) < b.lastUsedSweep {
		return
	}
	for id, u := range b.lastUsed {
		if u.expires <= now.UnixNano() {
			delete(b.lastUsed, id)
		}
	}
	b.lastUsedSweep = max(2*len(b.lastUsed), b.tokenCap)
}

// updateCachedToken replaces the cached record of a token after a write, keeping its limiter.
func (b *Broker) updateCachedToken(rec store.Token) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokenGen++
	if st, ok := b.tokens[rec.ID]; ok {
		st.rec.Store(&rec)
	}
}

// cachedTokens returns how many tokens are decoded in memory (tests use it).
func (b *Broker) cachedTokens() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.tokens)
}

// TokenDetails is a token's record plus what only memory knows.
type TokenDetails struct {
	store.Token
	LastUsed time.Time // zero if never used (since start, for tokens without a use limit)
	UsesLeft uint64
}

// GetToken returns everything about a token but its secret.
func (b *Broker) GetToken(ctx context.Context, id string) (TokenDetails, error) {
	if err := validateTokenID(id); err != nil {
		return TokenDetails{}, err
	}
	callInfo(ctx).TokenID = id
	rec, err := b.store.GetToken(id)
	if err != nil {
		return TokenDetails{}, err
	}
	d := TokenDetails{Token: rec, LastUsed: rec.LastUsedAt}
	b.mu.RLock()
	var n int64
	if st, ok := b.tokens[id]; ok {
		n = st.lastUsed.Load()
	} else if k, ok := lastUseKeyOf(id); ok {
		n = b.lastUsed[k].at
	}
	b.mu.RUnlock()
	if n != 0 && time.Unix(0, n).After(d.LastUsed) {
		d.LastUsed = time.Unix(0, n).UTC()
	}
	if rec.MaxUses > rec.Uses {
		d.UsesLeft = rec.MaxUses - rec.Uses
	}
	return d, nil
}

// redactedError hides every encoding of key from an error's message while keeping errors.Is.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

func redacted(err error, key []byte) error {
	msg := upstream.Redact(err.Error(), key)
	if msg == err.Error() {
		return err
	}
	return &redactedError{msg: msg, err: err}
}
