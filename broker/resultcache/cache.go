// Package resultcache is an in-memory cache of upstream results, bounded in bytes (least recently
// used entries go first), with a per-entry time to live and single flight: concurrent callers of a
// missing key share one computation, so identical searches spend one upstream credit.
//
// It stores whatever the broker gives it under opaque keys; the broker must never put a
// credential in a key or a value.
package resultcache

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Cache is safe for concurrent use.
type Cache struct {
	maxBytes int64
	now      func() time.Time

	mu       sync.Mutex
	bytes    int64
	lru      *list.List // front = most recently used; values are *entry
	entries  map[string]*list.Element
	inflight map[string]*call
	// waiting counts callers parked on another's computation (tests wait for it).
	waiting atomic.Int32
	// spawn starts a computation (SetSpawn); a new goroutine by default.
	spawn func(func())
	// recovered turns a computation's panic into its callers' error (SetRecover).
	recovered func(v any) error
}

type entry struct {
	key     string
	value   any
	size    int64
	stored  time.Time
	expires time.Time
}

type call struct {
	done  chan struct{}
	value any
	err   error
}

// New returns a cache holding at most maxBytes of values. now defaults to time.Now.
func New(maxBytes int64, now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	return &Cache{maxBytes: maxBytes, now: now, lru: list.New(), entries: map[string]*list.Element{}, inflight: map[string]*call{},
		spawn: func(f func()) { go f() }}
}

// SetSpawn makes the cache start its computations with spawn (say, a pool of reused goroutines)
// instead of a new goroutine each. spawn must run f soon, on another goroutine. Call it before use.
func (c *Cache) SetSpawn(spawn func(f func())) { c.spawn = spawn }

// ErrPanicked is the error of a computation that panicked, for every caller sharing it, unless
// SetRecover says otherwise. Nothing is cached, and the next caller of the key computes again.
var ErrPanicked = errors.New("resultcache: the computation panicked; nothing was cached")

// SetRecover sets what a computation that panics becomes: recovered is called once, on the
// computation's goroutine as it unwinds (so debug.Stack shows the panic), with the panic's value,
// and returns the error every caller sharing the computation gets (ErrPanicked if nil). Call it
// before use.
func (c *Cache) SetRecover(recovered func(v any) error) { c.recovered = recovered }

// Waiting reports how many callers are parked on another caller's computation (for tests that
// must know a caller is sharing a computation before they let it end).
func (c *Cache) Waiting() int { return int(c.waiting.Load()) }

// Result says where a value came from.
type Result struct {
	Cached bool          // served without running fn (from the cache or a shared in-flight call)
	Age    time.Duration // how old the cached value is (0 for a fresh or shared computation)
	// Started: this caller started the computation (fn ran, or is still running, for it).
	Started bool
}

// Private marks an error of fn as the computing caller's own (its context ended, its own budget
// ran out): callers waiting on that computation do not get it, they try again themselves.
func Private(err error) error { return privateError{err} }

type privateError struct{ error }

func (e privateError) Unwrap() error { return e.error }

// Do returns the fresh cached value for key, or runs fn once for all concurrent callers of key and
// caches its value for ttl (when fn succeeds and the value fits). fn runs on a goroutine of its
// own: a caller whose ctx ends stops waiting and gets ctx's error, the caller that started fn
// included, while the computation goes on; its value is cached for the others and whoever asks
// next (an answer already paid for is not thrown away because its caller gave up). fn must end by
// itself. fn's error is shared with the waiters unless it is Private.
func (c *Cache) Do(ctx context.Context, key string, ttl time.Duration, fn func() (value any, size int64, err error)) (any, Result, error) {
	c.mu.Lock()
	for {
		if v, age, ok := c.getLocked(key); ok {
			c.mu.Unlock()
			return v, Result{Cached: true, Age: age}, nil
		}
		cl, ok := c.inflight[key]
		if !ok {
			break
		}
		c.mu.Unlock()
		c.waiting.Add(1)
		select {
		case <-cl.done:
			c.waiting.Add(-1)
		case <-ctx.Done():
			c.waiting.Add(-1)
			return nil, Result{}, ctx.Err()
		}
		if _, private := cl.err.(privateError); !private {
			return cl.value, Result{Cached: cl.err == nil}, cl.err
		}
		c.mu.Lock() // the computing caller failed for its own reasons: compute again
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[key] = cl
	c.mu.Unlock()

	c.spawn(func() { c.compute(key, ttl, cl, fn) })
	select {
	case <-cl.done:
	case <-ctx.Done():
		return nil, Result{Started: true}, ctx.Err()
	}
	if p, ok := cl.err.(privateError); ok {
		return cl.value, Result{Started: true}, p.error
	}
	return cl.value, Result{Started: true}, cl.err
}

// compute runs fn for cl and caches its value. A panic in fn fails cl (every caller sharing it)
// and nothing else: left to unwind, it would end the process, and even recovered further up it
// would leave the key in flight forever, its callers and every later one waiting on it.
func (c *Cache) compute(key string, ttl time.Duration, cl *call, fn func() (any, int64, error)) {
	var size int64
	defer func() {
		if v := recover(); v != nil {
			var err error
			if c.recovered != nil {
				err = c.recovered(v)
			}
			if err == nil {
				err = ErrPanicked
			}
			cl.value, size, cl.err = nil, 0, err
		}
		c.mu.Lock()
		delete(c.inflight, key)
		if cl.err == nil && ttl > 0 {
			c.putLocked(key, cl.value, size, ttl)
		}
		c.mu.Unlock()
		close(cl.done)
	}()
	cl.value, size, cl.err = fn()
}

func (c *Cache) getLocked(key string) (any, time.Duration, bool) {
	el, ok := c.entries[key]
	if !ok {
		return nil, 0, false
	}
	e := el.Value.(*entry)
	now := c.now()
	if !now.Before(e.expires) {
		c.removeLocked(el)
		return nil, 0, false
	}
	c.lru.MoveToFront(el)
	return e.value, now.Sub(e.stored), true
}

func (c *Cache) putLocked(key string, value any, size int64, ttl time.Duration) {
	if size > c.maxBytes {
		return // would evict everything and still not fit
	}
	if el, ok := c.entries[key]; ok {
		c.removeLocked(el)
	}
	now := c.now()
	c.entries[key] = c.lru.PushFront(&entry{key: key, value: value, size: size, stored: now, expires: now.Add(ttl)})
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.removeLocked(c.lru.Back())
	}
}

func (c *Cache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*entry)
	delete(c.entries, e.key)
	c.bytes -= e.size
}

// Stats reports the number of entries and bytes held.
func (c *Cache) Stats() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}
