package resultcache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestHitMissExpiry(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	c := New(1000, clk.now)
	calls := 0
	fn := func() (any, int64, error) { calls++; return "v", 10, nil }
	if _, r, _ := c.Do(context.Background(), "k", time.Minute, fn); r.Cached {
		t.Fatal("first call cached")
	}
	clk.add(20 * time.Second)
	v, r, _ := c.Do(context.Background(), "k", time.Minute, fn)
	if !r.Cached || r.Age != 20*time.Second || v != "v" || calls != 1 {
		t.Fatalf("second call: %v %+v calls=%d", v, r, calls)
	}
	clk.add(time.Minute)
	if _, r, _ := c.Do(context.Background(), "k", time.Minute, fn); r.Cached || calls != 2 {
		t.Fatal("expired entry served")
	}
	// Errors are not cached; ttl 0 caches nothing.
	c.Do(context.Background(), "e", time.Minute, func() (any, int64, error) { return nil, 0, errors.New("x") })
	if _, r, _ := c.Do(context.Background(), "e", time.Minute, fn); r.Cached {
		t.Fatal("error was cached")
	}
	c.Do(context.Background(), "z", 0, fn)
	if _, r, _ := c.Do(context.Background(), "z", 0, fn); r.Cached {
		t.Fatal("ttl 0 cached")
	}
}

func TestLRUByBytes(t *testing.T) {
	c := New(100, nil)
	put := func(k string, size int64) {
		c.Do(context.Background(), k, time.Hour, func() (any, int64, error) { return k, size, nil })
	}
	put("a", 40)
	put("b", 40)
	c.Do(context.Background(), "a", time.Hour, nil) // touch a: b is now least recently used
	put("c", 40)                                    // evicts b
	if n, bytes := c.Stats(); n != 2 || bytes != 80 {
		t.Fatalf("stats %d %d", n, bytes)
	}
	if _, r, _ := c.Do(context.Background(), "a", time.Hour, func() (any, int64, error) { return "x", 1, nil }); !r.Cached {
		t.Fatal("a evicted")
	}
	put("huge", 101) // larger than the whole cache: not stored, nothing evicted
	if n, _ := c.Stats(); n != 2 {
		t.Fatal("huge entry evicted others")
	}
}

func TestSingleFlight(t *testing.T) {
	c := New(1000, nil)
	var calls atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	cached := atomic.Int32{}
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, r, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) {
				calls.Add(1)
				<-release
				return "v", 1, nil
			})
			if err != nil {
				t.Error(err)
			}
			if r.Cached {
				cached.Add(1)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if calls.Load() != 1 || cached.Load() != 19 {
		t.Fatalf("calls=%d cached=%d, want 1 and 19", calls.Load(), cached.Load())
	}
}

// A computation that fails for its caller's own reasons (Private) is not handed to the callers
// waiting on it: they compute again, and get their own answer. A plain failure is shared.
func TestPrivateErrorsAreNotShared(t *testing.T) {
	for _, tc := range []struct {
		name        string
		leaderErr   error
		wantWaiters string // "v" or the shared error's text
		wantCalls   int32
	}{
		{"private", Private(errors.New("token A: budget used")), "v", 2},
		{"shared", errors.New("upstream down"), "upstream down", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(1000, nil)
			var calls atomic.Int32
			release := make(chan struct{})
			leaderDone := make(chan error, 1)
			go func() {
				_, _, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) {
					calls.Add(1)
					<-release
					return nil, 0, tc.leaderErr
				})
				leaderDone <- err
			}()
			for calls.Load() == 0 {
				time.Sleep(time.Millisecond)
			}
			const waiters = 5
			got := make(chan string, waiters)
			for range waiters {
				go func() {
					v, _, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) {
						calls.Add(1)
						return "v", 1, nil
					})
					if err != nil {
						got <- err.Error()
						return
					}
					got <- v.(string)
				}()
			}
			for c.waiting.Load() != waiters { // every waiter is parked on the leader's call
				time.Sleep(time.Millisecond)
			}
			close(release)
			if err := <-leaderDone; err == nil || errors.As(err, new(privateError)) {
				t.Fatalf("leader got %v, want its own error, unwrapped", err)
			}
			for range waiters {
				if g := <-got; g != tc.wantWaiters {
					t.Fatalf("a waiter got %q, want %q", g, tc.wantWaiters)
				}
			}
			if n := calls.Load(); n != tc.wantCalls {
				t.Fatalf("%d computations, want %d", n, tc.wantCalls)
			}
		})
	}
}

// The caller that started a computation may leave (its ctx ends) without ending it: the value is
// still cached, so the caller's retry gets it without a second computation.
func TestStarterLeavesComputationGoesOn(t *testing.T) {
	c := New(1<<20, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	fn := func() (any, int64, error) {
		calls.Add(1)
		close(started)
		<-release
		return "answer", 6, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, r, err := c.Do(ctx, "k", time.Minute, fn)
	if !errors.Is(err, context.Canceled) || !r.Started {
		t.Fatalf("starter whose ctx ended: %v %+v, want Canceled and Started", err, r)
	}
	close(release)
	v, r, err := c.Do(context.Background(), "k", time.Minute, fn)
	if err != nil || v != "answer" || !r.Cached || r.Started || calls.Load() != 1 {
		t.Fatalf("retry: %v %+v %v after %d computations; want the first computation's answer", v, r, err, calls.Load())
	}
}

// A computation that panics fails the callers sharing it, with the error SetRecover makes of the
// panic (ErrPanicked without one), called once; the key is not left in flight: the next caller
// computes again and is answered. Without the recover the test process dies.
func TestPanicFailsOnlyItsCallers(t *testing.T) {
	errBug := errors.New("a bug, recovered")
	for _, tc := range []struct {
		name      string
		recovered func(any) error
		want      error
	}{
		{"default", nil, ErrPanicked},
		{"SetRecover", func(any) error { return errBug }, errBug},
		{"SetRecover returns nil", func(any) error { return nil }, ErrPanicked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New(1000, nil)
			var recovers atomic.Int32
			if tc.recovered != nil {
				c.SetRecover(func(v any) error {
					recovers.Add(1)
					if v != "boom" {
						t.Errorf("recovered %v, want the panic's value", v)
					}
					return tc.recovered(v)
				})
			}
			started, release := make(chan struct{}), make(chan struct{})
			leaderDone := make(chan error, 1)
			go func() {
				_, _, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) {
					close(started)
					<-release
					panic("boom")
				})
				leaderDone <- err
			}()
			<-started
			const waiters = 3
			got := make(chan error, waiters)
			for range waiters {
				go func() {
					_, _, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) {
						return "v", 1, nil // must not run: the waiters share the leader's computation
					})
					got <- err
				}()
			}
			for c.Waiting() != waiters { // every waiter is parked on the leader's call
				time.Sleep(time.Millisecond)
			}
			close(release)
			if err := <-leaderDone; !errors.Is(err, tc.want) {
				t.Fatalf("leader got %v, want %v", err, tc.want)
			}
			for range waiters {
				if err := <-got; !errors.Is(err, tc.want) {
					t.Fatalf("a waiter got %v, want %v", err, tc.want)
				}
			}
			if tc.recovered != nil && recovers.Load() != 1 {
				t.Fatalf("SetRecover's func called %d times, want once", recovers.Load())
			}
			if n, _ := c.Stats(); n != 0 {
				t.Fatalf("%d entries cached after a panic, want 0", n)
			}
			v, r, err := c.Do(context.Background(), "k", time.Minute, func() (any, int64, error) { return "v", 1, nil })
			if err != nil || v != "v" || r.Cached {
				t.Fatalf("next call: %v %+v %v, want a fresh computation's answer", v, r, err)
			}
		})
	}
}
