package limiter

import (
	"context"
	"errors"
	"testing"
	"time"
)

// enterAsync enters g in a goroutine and delivers its done func (or error) on the channel.
func enterAsync(g *Gate, ctx context.Context) <-chan func(Outcome) {
	ch := make(chan func(Outcome), 1)
	go func() {
		done, err := g.Enter(ctx, 0)
		if err != nil {
			done = nil
		}
		ch <- done
	}()
	return ch
}

// waitFor polls cond; it stands in for no timing, only for goroutines reaching a known state.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// pending reports whether the caller behind ch is still waiting to enter.
func pending(ch <-chan func(Outcome)) bool { return len(ch) == 0 }

// After a 429 every caller waits for the window; then exactly one goes (the probe). A refused
// probe closes the gate again; a successful one lets everyone through.
func TestGateHalfOpen(t *testing.T) {
	clk := newFakeClock()
	g := NewGate(clk)
	ctx := context.Background()

	// Open: everyone goes.
	done, err := g.Enter(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	done(Outcome{Limited: true, Wait: time.Second}) // a 429 with Retry-After: 1

	const callers = 6
	var chans []<-chan func(Outcome)
	for range callers {
		chans = append(chans, enterAsync(g, ctx))
	}
	waitFor(t, "every caller to wait for the window", func() bool { return clk.Waiting() == callers })
	for _, ch := range chans {
		if !pending(ch) {
			t.Fatal("a caller went during the upstream's wait")
		}
	}

	// The window ends: one probe, the rest keep waiting.
	clk.Advance(time.Second)
	probe, rest := takeOne(t, chans)
	for _, ch := range rest {
		if !pending(ch) {
			t.Fatal("a second caller went while the probe was in flight")
		}
	}

	// The probe is refused again: the gate closes for the new wait; still nobody else went.
	probe(Outcome{Limited: true, Wait: 2 * time.Second})
	waitFor(t, "the others to wait for the new window", func() bool { return clk.Waiting() == callers-1 })
	if got := g.ClosedUntil().Sub(clk.Now()); got != 2*time.Second {
		t.Fatalf("closed for %s after the refused probe, want 2s", got)
	}
	clk.Advance(2 * time.Second)
	probe, rest = takeOne(t, rest)

	// The probe succeeds: everyone left goes at once, and later callers do not wait.
	probe(Outcome{})
	for i, ch := range rest {
		select {
		case f := <-ch:
			if f == nil {
				t.Fatalf("caller %d failed to enter", i)
			}
			f(Outcome{})
		case <-time.After(10 * time.Second):
			t.Fatalf("caller %d still waiting after the probe succeeded", i)
		}
	}
	if !g.ClosedUntil().IsZero() {
		t.Fatal("gate still closed after a successful probe")
	}
	if _, err := g.Enter(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// takeOne waits until exactly one of chans has entered and returns its done func and the others.
func takeOne(t *testing.T, chans []<-chan func(Outcome)) (func(Outcome), []<-chan func(Outcome)) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		for i, ch := range chans {
			select {
			case f := <-ch:
				if f == nil {
					t.Fatalf("caller %d failed to enter", i)
				}
				rest := append(append([]<-chan func(Outcome){}, chans[:i]...), chans[i+1:]...)
				return f, rest
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatal("no probe went after the window ended")
		case <-time.After(time.Millisecond):
		}
	}
}

// A probe that learns nothing (cancelled, timed out) hands the probe role to the next caller.
func TestGateProbeWithoutAnswerPassesTheRole(t *testing.T) {
	clk := newFakeClock()
	g := NewGate(clk)
	done, _ := g.Enter(context.Background(), 0)
	done(Outcome{Limited: true}) // no wait named: half-open at once, no pause invented
	if got := g.ClosedUntil(); !got.Equal(clk.Now()) {
		t.Fatalf("closed until %s, want now (%s)", got, clk.Now())
	}
	probe, err := g.Enter(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	next := enterAsync(g, context.Background())
	probe(Outcome{Unknown: true})
	f := <-next
	if f == nil {
		t.Fatal("the next caller did not become the probe")
	}
	// It is the probe: a third caller waits for it.
	third := enterAsync(g, context.Background())
	if !pending(third) {
		t.Fatal("a third caller went while the new probe runs")
	}
	f(Outcome{})
	if <-third == nil {
		t.Fatal("third caller failed after the probe succeeded")
	}
}

// A wait longer than the caller's deadline or maxWait is refused at once with the wait, and a
// caller cancelled while waiting for the probe leaves.
func TestGateRefusesLongWaits(t *testing.T) {
	clk := newFakeClock()
	g := NewGate(clk)
	done, _ := g.Enter(context.Background(), 0)
	done(Outcome{Limited: true, Wait: time.Hour})

	var we *WaitError
	if _, err := g.Enter(context.Background(), 10*time.Second); !errors.As(err, &we) || we.Wait != time.Hour {
		t.Fatalf("maxWait 10s: got %v, want a WaitError of 1h", err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), clk.Now().Add(time.Minute))
	defer cancel()
	if _, err := g.Enter(ctx, 0); !errors.As(err, &we) {
		t.Fatalf("deadline in 1m: got %v, want a WaitError", err)
	}

	clk.Advance(time.Hour)
	probe, err := g.Enter(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	waiter := make(chan error, 1)
	go func() { _, err := g.Enter(cctx, 0); waiter <- err }()
	ccancel()
	if err := <-waiter; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	probe(Outcome{})
}

func TestNilGateLetsEverythingThrough(t *testing.T) {
	var g *Gate
	done, err := g.Enter(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	done(Outcome{Limited: true})
	if !g.ClosedUntil().IsZero() {
		t.Fatal("nil gate reports closed")
	}
}

// A 429 asking for a wait past MaxPause closes the gate for MaxPause only: then one probe goes,
// and a refused one closes it again (for MaxPause at most), a taken one opens it. A bogus
// Retry-After cannot shut a credential until brokerd restarts.
func TestGatePauseIsBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		wait time.Duration
		want time.Duration
	}{
		{"within the bound", 30 * time.Minute, 30 * time.Minute},
		{"at the bound", MaxPause, MaxPause},
		{"a day", 24 * time.Hour, MaxPause},
		{"the largest Retry-After the client reads", (1 << 32) * time.Second, MaxPause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			g := NewGate(clk)
			ctx := context.Background()
			done, err := g.Enter(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			done(Outcome{Limited: true, Wait: tc.wait})
			if got := g.ClosedUntil().Sub(clk.Now()); got != tc.want {
				t.Fatalf("closed for %s, want %s", got, tc.want)
			}
			ch := enterAsync(g, ctx)
			waitFor(t, "the caller to wait for the pause", func() bool { return clk.Waiting() == 1 })
			clk.Advance(tc.want - time.Nanosecond)
			if !pending(ch) {
				t.Fatal("a caller went before the pause ended")
			}
			clk.Advance(time.Nanosecond)
			probe := <-ch
			if probe == nil {
				t.Fatal("the caller after the pause was refused")
			}
			probe(Outcome{Limited: true, Wait: tc.wait}) // refused again: paused again, as long
			if got := g.ClosedUntil().Sub(clk.Now()); got != tc.want {
				t.Fatalf("closed for %s after a refused probe, want %s", got, tc.want)
			}
		})
	}
}

// EnterWaited says whether the caller waited before it was let in: not through an open gate, yes
// after the upstream's pause (the upstream client then checks its caller again).
func TestGateEnterWaited(t *testing.T) {
	clk := newFakeClock()
	g := NewGate(clk)
	ctx := context.Background()
	done, waited, err := g.EnterWaited(ctx, 0)
	if err != nil || waited {
		t.Fatalf("open gate: waited %v, err %v; want let in at once", waited, err)
	}
	done(Outcome{Limited: true, Wait: time.Second})

	type entered struct {
		done   func(Outcome)
		waited bool
	}
	ch := make(chan entered, 1)
	go func() {
		done, waited, err := g.EnterWaited(ctx, 0)
		if err != nil {
			t.Error(err)
		}
		ch <- entered{done, waited}
	}()
	waitFor(t, "the probe to wait for the pause", func() bool { return clk.Waiting() == 1 })
	clk.Advance(time.Second)
	probe := <-ch
	if !probe.waited {
		t.Fatal("the probe waited out the pause but EnterWaited says it did not")
	}
	probe.done(Outcome{})
	if _, waited, err := g.EnterWaited(ctx, 0); err != nil || waited {
		t.Fatalf("reopened gate: waited %v, err %v; want let in at once", waited, err)
	}
}
