package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// tokenState is what the broker keeps in memory about a token: its record, its rate limiter and
// when it was last used (durable only for use-limited tokens, whose uses are written anyway).
type tokenState struct {
	rec      atomic.Pointer[store.Token]
	lastUsed atomic.Int64 // unix nanos, 0 = not since start

	limOnce sync.Once
	lim     *rate.Limiter
}

func (s *tokenState) record() *store.Token { return s.rec.Load() }

func (s *tokenState) touch(now time.Time) { s.lastUsed.Store(now.UnixNano()) }

// allow spends one call of the token's rate limit, or says how long to wait.
func (s *tokenState) allow(now time.Time) error {
	t := s.record()
	if t.RateLimit == 0 || t.RatePeriod <= 0 {
		return nil
	}
	s.limOnce.Do(func() {
		s.lim = rate.NewLimiter(rate.Every(t.RatePeriod/time.Duration(t.RateLimit)), int(t.RateLimit))
	})
	r := s.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return fmt.Errorf("%w: token %s is limited to %d calls per %s; retry in %s",
			ErrRateLimited, t.ID, t.RateLimit, t.RatePeriod, d.Round(time.Millisecond))
	}
	return nil
}

// ErrRateLimited reports a token over its own rate limit (not the upstream's).
var ErrRateLimited = errors.New("rate limited")

// lookupToken returns the cached state for id, loading it on a miss.
func (b *Broker) lookupToken(id string) (*tokenState, error) {
	b.mu.RLock()
	st, ok := b.tokens[id]
	b.mu.RUnlock()
	if ok {
		return st, nil
	}
	rec, err := b.store.GetToken(id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.tokens[id]; ok { // another caller loaded it first, or a revoke raced us
		return st, nil
	}
	st = &tokenState{}
	st.rec.Store(&rec)
	b.tokens[id] = st
	return st, nil
}

// updateCachedToken replaces the cached record of a token after a write, keeping its limiter.
func (b *Broker) updateCachedToken(rec store.Token) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st, ok := b.tokens[rec.ID]; ok {
		st.rec.Store(&rec)
	}
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
	st, ok := b.tokens[id]
	b.mu.RUnlock()
	if ok {
		if n := st.lastUsed.Load(); n != 0 && time.Unix(0, n).After(d.LastUsed) {
			d.LastUsed = time.Unix(0, n).UTC()
		}
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
