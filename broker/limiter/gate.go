package limiter

import (
	"context"
	"sync"
	"time"
)

// Gate is a credential's half-open gate for upstream rate limits. When the upstream answers 429
// with a wait, the gate closes until then; when the wait is over, exactly one call (the probe)
// goes first, and the others follow only once it succeeds. A probe that is refused again closes
// the gate for the new wait. So a storm of callers costs about one rejected upstream call per
// window instead of one per caller per window (issue 16 §7: 6 clients over 3 s cost 18).
//
// Every attempt at the upstream enters the gate, retries included, so the upstream client's own
// retry loop cannot bypass it. The zero Gate is not usable; a nil *Gate lets everything through.
type Gate struct {
	clock Clock

	mu      sync.Mutex
	until   time.Time     // closed before this (the upstream's wait); zero: open
	probing chan struct{} // non-nil while a probe is in flight; closed when it ends
}

// MaxPause bounds how long one 429 closes a gate. Retry-After is the upstream's word, but a bogus
// one (a misconfigured proxy, a captive portal, a value in milliseconds) would otherwise close the
// credential for days or years, and only a restart of brokerd would open it. After MaxPause one
// probe goes; if the upstream still refuses it, it pauses everyone again. That costs one rejected
// call an hour against a credential that is really paused that long.
const MaxPause = time.Hour

// NewGate returns an open gate; nil clock means the real one.
func NewGate(clock Clock) *Gate {
	if clock == nil {
		clock = realClock{}
	}
	return &Gate{clock: clock}
}

// Outcome is what an attempt that went through the gate learned about the upstream's limit.
type Outcome struct {
	// Limited: the upstream refused the call for its rate limit (429).
	Limited bool
	// Wait is how long the upstream asked for (Retry-After); 0 if it did not say.
	Wait time.Duration
	// Unknown: the attempt ended before the upstream answered (cancelled, timed out, transport
	// error), so it proves nothing about the limit either way.
	Unknown bool
}

// Enter waits until the caller may send an attempt: at once while the gate is open, else until
// the wait is over and the caller is the probe, or the probe has succeeded. It returns done, which
// the caller must call exactly once with the attempt's outcome. It fails with a *WaitError, without
// waiting, when the gate stays closed past ctx's deadline or past maxWait (0: no cap), and with
// ctx's error if ctx ends while waiting.
func (g *Gate) Enter(ctx context.Context, maxWait time.Duration) (done func(Outcome), err error) {
	done, _, err = g.EnterWaited(ctx, maxWait)
	return done, err
}

// EnterWaited is Enter that also reports whether the caller waited before it was let in (for the
// gate's pause, or for a probe's answer), so that it can check again whatever may have changed
// meanwhile; a caller let in at once did not.
func (g *Gate) EnterWaited(ctx context.Context, maxWait time.Duration) (done func(Outcome), waited bool, err error) {
	if g == nil {
		return func(Outcome) {}, false, nil
	}
	for ; ; waited = true {
		g.mu.Lock()
		now := g.clock.Now()
		switch {
		case g.until.IsZero() && g.probing == nil:
			g.mu.Unlock()
			return g.settle(nil), waited, nil
		case now.Before(g.until):
			wait := g.until.Sub(now)
			g.mu.Unlock()
			if d, ok := ctx.Deadline(); (ok && now.Add(wait).After(d)) || (maxWait > 0 && wait > maxWait) {
				return nil, waited, &WaitError{Wait: wait, Limit: "the upstream's Retry-After"}
			}
			select {
			case <-g.clock.After(wait):
			case <-ctx.Done():
				return nil, true, ctx.Err()
			}
		case g.probing == nil:
			probe := make(chan struct{})
			g.probing = probe
			g.mu.Unlock()
			return g.settle(probe), waited, nil
		default:
			probe := g.probing
			g.mu.Unlock()
			select {
			case <-probe:
			case <-ctx.Done():
				return nil, true, ctx.Err()
			}
		}
	}
}

// settle returns the done func of an attempt; probe is non-nil for the probe.
func (g *Gate) settle(probe chan struct{}) func(Outcome) {
	var once sync.Once
	return func(o Outcome) {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			switch {
			case o.Limited:
				// A 429 that names no wait leaves the gate half-open at once: no pause is
				// invented, but the next call is a probe and the others wait for its answer.
				if until := g.clock.Now().Add(min(max(o.Wait, 0), MaxPause)); until.After(g.until) {
					g.until = until
				}
			case o.Unknown:
				// Nothing learned: a probe hands its role to the next caller; others change nothing.
			case probe != nil:
				// The upstream took the probe: the window is open again. A call that entered before
				// the gate closed proves less (it may have been counted in the old window), so only
				// the probe opens the gate.
				g.until = time.Time{}
			}
			if probe != nil && g.probing == probe {
				g.probing = nil
				close(probe)
			}
		})
	}
}

// ClosedUntil returns when the gate opens for a probe (zero when open), for status displays.
func (g *Gate) ClosedUntil() time.Time {
	if g == nil {
		return time.Time{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until
}
