// Package limiter spaces the calls that share one upstream credential: a GCRA rate limiter whose
// slots are handed out in arrival order (so waiting callers are served first come, first served,
// whichever token they hold), which a caller takes only if its slot comes before its deadline, and
// which the upstream can pause (Retry-After, X-RateLimit-Reset) for every caller at once.
//
// It holds times only; it never sees a request, a token or a key.
package limiter

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Clock is the time source; tests pass a fake one.
type Clock interface {
	Now() time.Time
	// After behaves like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Limiter allows Rate calls per Period with bursts of up to Burst.
type Limiter struct {
	clock    Clock
	interval time.Duration // Period / Rate: the spacing of slots
	tau      time.Duration // (Burst-1) * interval: how far ahead of schedule a burst may run

	mu     sync.Mutex
	tat    time.Time   // theoretical arrival time of the next call (GCRA)
	paused time.Time   // no slot before this (the upstream asked us to wait)
	holes  []time.Time // slots given back with later ones after them, sorted (giveBack)
	rate   int
	period time.Duration
	burst  int
}

// New returns a limiter for rate calls per period with the given burst (at least 1).
func New(rate int, period time.Duration, burst int, clock Clock) (*Limiter, error) {
	if rate <= 0 || period <= 0 {
		return nil, fmt.Errorf("rate limit must be positive: %d per %s", rate, period)
	}
	if burst <= 0 {
		burst = 1
	}
	if clock == nil {
		clock = realClock{}
	}
	interval := period / time.Duration(rate)
	return &Limiter{clock: clock, interval: interval, tau: time.Duration(burst-1) * interval, rate: rate, period: period, burst: burst}, nil
}

// String describes the limit, e.g. "10/1m0s burst 2".
func (l *Limiter) String() string { return fmt.Sprintf("%d/%s burst %d", l.rate, l.period, l.burst) }

// WaitError reports that the next free slot comes after the caller's deadline.
type WaitError struct {
	Wait  time.Duration // how long the caller would have had to wait
	Limit string
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("the credential's rate limit (%s) has no free slot for %s", e.Limit, e.Wait.Round(time.Millisecond))
}

// reserve takes the next slot if it starts no later than deadline (zero: no deadline) and returns
// when it starts; otherwise it takes nothing and returns how long the caller would wait.
func (l *Limiter) reserve(deadline time.Time) (at time.Time, err error) {
	s, err := l.take(deadline)
	return s.at, err
}

// slot is what take handed out: when it starts, and the limiter's tat before and after it, or
// reused when it was a slot given back (see giveBack).
type slot struct {
	at, prev, next time.Time
	reused         bool
}

func (l *Limiter) take(deadline time.Time) (slot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	at := l.tat.Add(-l.tau)
	if at.Before(now) {
		at = now
	}
	if at.Before(l.paused) {
		at = l.paused
	}
	// A slot given back is handed out again first when it comes sooner: it was scheduled with
	// the spacing the limit allows, and only slots still ahead (and not inside a pause) are kept.
	l.holes = slices.DeleteFunc(l.holes, func(h time.Time) bool { return h.Before(now) || h.Before(l.paused) })
	if len(l.holes) > 0 && l.holes[0].Before(at) && (deadline.IsZero() || !l.holes[0].After(deadline)) {
		h := l.holes[0]
		l.holes = l.holes[1:]
		return slot{at: h, reused: true}, nil
	}
	if !deadline.IsZero() && at.After(deadline) {
		return slot{}, &WaitError{Wait: at.Sub(now), Limit: l.String()}
	}
	tat := l.tat
	if tat.Before(at) {
		tat = at
	}
	s := slot{at: at, prev: l.tat, next: tat.Add(l.interval)}
	l.tat = s.next
	return s, nil
}

// giveBack returns s, whose caller gave up before it started. If no slot was handed out after it
// (every take moves tat forward, so an unchanged tat says so), the limiter is as if s had never
// been taken. Otherwise s is kept as a hole that take hands out again while it is still ahead:
// moving the schedule back instead would space two calls closer than the limit allows, and
// dropping it would let a caller that takes slots and gives up burn them for everyone.
func (l *Limiter) giveBack(s slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !s.reused && l.tat.Equal(s.next) {
		l.tat = s.prev
		return
	}
	if s.at.Before(l.clock.Now()) {
		return
	}
	i, _ := slices.BinarySearchFunc(l.holes, s.at, func(a, b time.Time) int { return a.Compare(b) })
	l.holes = slices.Insert(l.holes, i, s.at)
}

// Wait blocks until the caller's slot, in arrival order. It returns a *WaitError at once when the
// slot would start after ctx's deadline or after maxWait (0: no cap), and ctx's error if ctx ends
// while waiting. The slot is then given back (see giveBack), so a caller that takes slots and gives
// up cannot burn them for the others.
func (l *Limiter) Wait(ctx context.Context, maxWait time.Duration) error {
	_, err := l.WaitTook(ctx, maxWait)
	return err
}

// WaitTook is Wait that also says how long the caller's slot was in the future, i.e. how long it
// waited when err is nil (0 when a slot was free). It is read from the limiter's clock, so it is
// exact under a fake clock.
func (l *Limiter) WaitTook(ctx context.Context, maxWait time.Duration) (time.Duration, error) {
	var deadline time.Time
	if d, ok := ctx.Deadline(); ok {
		deadline = d
	}
	if maxWait > 0 {
		if m := l.clock.Now().Add(maxWait); deadline.IsZero() || m.Before(deadline) {
			deadline = m
		}
	}
	s, err := l.take(deadline)
	if err != nil {
		return 0, err
	}
	d := s.at.Sub(l.clock.Now())
	if d <= 0 {
		return 0, nil
	}
	select {
	case <-l.clock.After(d):
		return d, nil
	case <-ctx.Done():
		l.giveBack(s)
		return 0, ctx.Err()
	}
}

// PauseUntil makes every caller wait until t (e.g. the upstream's X-RateLimit-Reset).
func (l *Limiter) PauseUntil(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.After(l.paused) {
		l.paused = t
	}
}

// PausedUntil returns the end of the current pause (zero if none).
func (l *Limiter) PausedUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.paused
}
