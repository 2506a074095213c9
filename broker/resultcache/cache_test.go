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
