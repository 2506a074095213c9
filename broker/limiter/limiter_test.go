package limiter

import (
	"context"
	"errors"
	"github.com/credbroker/credbroker/broker/clocktest"
	"sort"
	"sync"
	"testing"
	"time"
)

func newFakeClock() *clocktest.Fake {
	return clocktest.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

func TestBurstThenSpacing(t *testing.T) {
	clk := newFakeClock()
	l, err := New(10, time.Minute, 3, clk)
	if err != nil {
		t.Fatal(err)
	}
	var at []time.Duration
	start := clk.Now()
	for range 6 {
		a, err := l.reserve(time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, a.Sub(start))
	}
	want := []time.Duration{0, 0, 0, 6 * time.Second, 12 * time.Second, 18 * time.Second}
	for i := range want {
		if at[i] != want[i] {
			t.Fatalf("slots %v, want %v", at, want)
		}
	}
}

func TestDeadlineRefusesWithoutTakingASlot(t *testing.T) {
	clk := newFakeClock()
	l, _ := New(1, time.Minute, 1, clk)
	if err := l.Wait(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), clk.Now().Add(10*time.Second))
	defer cancel()
	err := l.Wait(ctx, 0)
	var we *WaitError
	if !errors.As(err, &we) || we.Wait != time.Minute {
		t.Fatalf("got %v, want a WaitError of 1m", err)
	}
	// maxWait caps the wait the same way.
	if err := l.Wait(context.Background(), 30*time.Second); !errors.As(err, &we) {
		t.Fatalf("maxWait: %v", err)
	}
	// The refusals took no slot: the next slot is still one minute after the first.
	a, _ := l.reserve(time.Time{})
	if got := a.Sub(clk.Now()); got != time.Minute {
		t.Fatalf("next slot in %s, want 1m", got)
	}
}

func TestPauseUntil(t *testing.T) {
	clk := newFakeClock()
	l, _ := New(100, time.Second, 10, clk)
	l.PauseUntil(clk.Now().Add(30 * time.Second))
	a, _ := l.reserve(time.Time{})
	if got := a.Sub(clk.Now()); got != 30*time.Second {
		t.Fatalf("slot after pause in %s, want 30s", got)
	}
	l.PauseUntil(clk.Now()) // an earlier pause does not shorten the current one
	if !l.PausedUntil().Equal(clk.Now().Add(30 * time.Second)) {
		t.Fatal("pause shortened")
	}
}

// 20 concurrent callers on a 10/m limit: in any minute at most 10 go, and they go in the order
// they arrived.
func TestConcurrentCallersNeverExceedLimit(t *testing.T) {
	clk := newFakeClock()
	l, _ := New(10, time.Minute, 1, clk)
	var (
		mu    sync.Mutex
		times []time.Time
		wg    sync.WaitGroup
	)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Wait(context.Background(), 0); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			times = append(times, clk.Now())
			mu.Unlock()
		}()
	}
	// Advance time in steps until all have gone. Before each step, wait until every caller has
	// either gone (and noted the time) or is waiting for its slot: a caller whose slot has come
	// but who has not run yet would otherwise note a later time than its slot.
	for deadline := time.Now().Add(10 * time.Second); ; {
		mu.Lock()
		n := len(times)
		mu.Unlock()
		if n == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d callers went", n)
		}
		if n+clk.Waiting() == 20 {
			clk.Advance(time.Second)
		}
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < time.Minute {
			j++
		}
		if j-i > 10 {
			t.Fatalf("%d calls within one minute starting at %s", j-i, times[i])
		}
	}
}

// A caller that gives up while it waits for its slot (its context ends) gives the slot back, and
// the next caller gets it: otherwise a token holder could send calls and cancel them, burning
// every slot of the shared credential for free (nothing is sent, its uses and credits are given
// back) and leave every other token refused. A slot with a later one after it is handed out again
// as it was, never by moving the schedule back (which would space two calls closer than allowed).
func TestCancelledWaitGivesItsSlotBack(t *testing.T) {
	clk := newFakeClock()
	l, _ := New(1, time.Minute, 1, clk)
	if err := l.Wait(context.Background(), 0); err != nil { // the burst slot
		t.Fatal(err)
	}
	waitAsync := func(ctx context.Context) <-chan error {
		done := make(chan error, 1)
		go func() { done <- l.Wait(ctx, 0) }()
		return done
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := waitAsync(ctx)
	waitFor(t, "the caller to wait for its slot", func() bool { return clk.Waiting() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	if a, _ := l.reserve(time.Time{}); a.Sub(clk.Now()) != time.Minute {
		t.Fatalf("next slot in %s after the cancelled caller, want its slot, 1m", a.Sub(clk.Now()))
	}

	// Now the slot at 1m is taken (by the reserve above); one caller waits for 2m, another for 3m.
	// The first gives up: the second keeps its slot at 3m, and a caller whose deadline is 2m gets
	// the slot at 2m; the next one after that is at 4m.
	ctx, cancel = context.WithCancel(context.Background())
	first := waitAsync(ctx)
	waitFor(t, "the first caller to wait", func() bool { return clk.Waiting() == 2 })
	second := waitAsync(context.Background())
	waitFor(t, "the second caller to wait", func() bool { return clk.Waiting() == 3 })
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	if a, err := l.reserve(clk.Now().Add(2 * time.Minute)); err != nil || a.Sub(clk.Now()) != 2*time.Minute {
		t.Fatalf("a caller with a 2m deadline: slot in %s (%v), want the given-back slot at 2m", a.Sub(clk.Now()), err)
	}
	if a, _ := l.reserve(time.Time{}); a.Sub(clk.Now()) != 4*time.Minute {
		t.Fatalf("next slot in %s, want 4m", a.Sub(clk.Now()))
	}
	clk.Advance(3 * time.Minute)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	// A slot given back that has passed is not handed out: it would come late, closer to the next.
	ctx, cancel = context.WithCancel(context.Background())
	third := waitAsync(ctx) // the slot at 5m, with the one at 4m taken before it
	waitFor(t, "the third caller to wait", func() bool { return clk.Waiting() == 1 })
	fourth := waitAsync(context.Background()) // 6m
	waitFor(t, "the fourth caller to wait", func() bool { return clk.Waiting() == 2 })
	cancel()
	if err := <-third; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	clk.Advance(2*time.Minute + time.Second) // past 5m
	if a, _ := l.reserve(time.Time{}); a.Sub(clk.Now()) != time.Minute+59*time.Second {
		t.Fatalf("next slot in %s, want the one at 7m (1m59s from now)", a.Sub(clk.Now()))
	}
	clk.Advance(time.Minute)
	if err := <-fourth; err != nil {
		t.Fatal(err)
	}
}
