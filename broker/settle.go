package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// Settling what a search spent when its caller gives up. A request written to the upstream may be
// served and billed whatever the caller does next, so from then on the call is the broker's: it
// runs to its answer (or its attempt timeout) on a context detached from the caller's, the credits
// the upstream reports are settled, the answer is cached for the caller's retry, and the audit log
// gets the credits. Only a call that provably did not reach the upstream is refunded: refused by
// the broker, nothing sent, or answered with an error status (which the upstream does not bill).
// A token's uses (--max-uses) settle by the same rule.

// ErrShuttingDown: brokerd is stopping and starts no new upstream call.
var ErrShuttingDown = errors.New("brokerd is shutting down")

// ErrEndedByShutdown is what the caller of a call brokerd ended at its shutdown deadline is told,
// over gRPC (grpcapi's drainer) and the HTTP front alike.
var ErrEndedByShutdown = fmt.Errorf("%w; the call was ended before it finished, retry once brokerd is back", ErrShuttingDown)

// eventSettled marks the audit record a search's computation writes when its caller left before
// the upstream answered: the same call as the caller's own record (Canceled or DeadlineExceeded),
// carrying the credits it spent. Usage counts its credits, not another call.
const eventSettled = "settled-after-caller-left"

// searchMethod is the gRPC method whose audit records are searches (Usage, eventSettled records).
const searchMethod = "/credbroker.v1.SearchService/Search"

// flights tracks the searches' upstream computations, which may outlive their callers, so that
// shutdown waits for them to settle before the store closes.
type flights struct {
	mu     sync.Mutex
	n      int
	idle   chan struct{} // closed while n == 0
	closed bool
	// ctx ends when Drain stops waiting: it cuts off the attempts still running.
	ctx    context.Context
	cancel context.CancelFunc
}

func newFlights() *flights {
	f := &flights{idle: make(chan struct{})}
	close(f.idle)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// maxFlights bounds the searches' upstream computations in flight at once. A computation may
// outlive its caller (it settles what the upstream may bill), so a token holder who sends and
// cancels in a loop against a slow upstream could otherwise pile up goroutines and upstream
// connections without bound: past this, a search is refused at once (RATE_LIMITED, retry in 1s).
// 1024 is 16 connections' worth of gRPC's 64 concurrent calls each.
const maxFlights = 1024

// errFlightsFull refuses a search while maxFlights computations are in flight.
var errFlightsFull = refusal(ReasonRateLimited, time.Second,
	fmt.Errorf("%w: brokerd has %d searches in flight, the most it runs at once; retry in 1s", ErrRateLimited, maxFlights))

// enter counts a computation starting: ErrShuttingDown once Drain has begun, errFlightsFull at
// maxFlights.
func (f *flights) enter() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return refusal(ReasonShuttingDown, 0, fmt.Errorf("%w; retry when it is back", ErrShuttingDown))
	}
	if f.n >= maxFlights {
		return errFlightsFull
	}
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	return nil
}

func (f *flights) exit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 {
		close(f.idle)
	}
}

func (f *flights) wait(ctx context.Context) error {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return nil // idle wins over a ctx already done (Drain at the shutdown deadline)
	default:
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workers runs the searches' computations on reused goroutines, as gRPC's stream workers do for
// handlers: a search costs no new goroutine, and under load the goroutine count does not swing with
// the calls in flight. Up to max workers are kept; past that a computation gets a goroutine of its
// own. A worker idle for workerIdle ends (so an idle brokerd returns to its baseline), and all
// idle ones end at Drain.
type workers struct {
	work chan func()
	quit chan struct{}
	once sync.Once
	n    atomic.Int32
	max  int32
	// onPanic is told of a panic a function left unrecovered (see do).
	onPanic func(v any)
}

func newWorkers(max int32, onPanic func(v any)) *workers {
	return &workers{work: make(chan func()), quit: make(chan struct{}), max: max, onPanic: onPanic}
}

// run runs f on an idle worker, a new one, or past max a goroutine of its own.
func (w *workers) run(f func()) {
	select {
	case w.work <- f:
		return
	default:
	}
	if w.n.Add(1) <= w.max {
		go w.loop(f)
		return
	}
	w.n.Add(-1)
	go w.do(f)
}

// do runs f. What the workers run recovers its own panics, failing its call (call.run, runDetached,
// the result cache's compute); this is the last stop for any other panic, so that it is logged
// and ends neither brokerd nor the worker.
func (w *workers) do(f func()) {
	defer func() {
		if v := recover(); v != nil {
			w.onPanic(v)
		}
	}()
	f()
}

func (w *workers) loop(f func()) {
	defer w.n.Add(-1)
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		w.do(f)
		idle.Reset(workerIdle)
		select {
		case f = <-w.work:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}

func (w *workers) stop() { w.once.Do(func() { close(w.quit) }) }

// WaitSettled waits until no search computation is running: every upstream call whose caller left
// has settled its credits, uses, cache entry and audit record. It returns ctx's error if ctx ends
// first.
func (b *Broker) WaitSettled(ctx context.Context) error { return b.flights.wait(ctx) }

// Drain is for shutdown, after the server stopped taking calls: no new upstream call starts, and
// Drain waits for those running (their callers may have left) to settle. If ctx ends first it cuts
// the remaining attempts off, waits for them to settle (as charged: they were sent) and returns
// ctx's error. Every store write of a search is done when Drain returns.
func (b *Broker) Drain(ctx context.Context) error {
	f := b.flights
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	if err := f.wait(ctx); err == nil {
		b.workers.stop()
		return nil
	}
	f.cancel()
	_ = f.wait(context.Background()) // each attempt ends promptly once cut off
	b.workers.stop()
	return fmt.Errorf("upstream calls still running were cut off and counted as charged: %w", ctx.Err())
}

// useHold is one use of a use-limited token, counted durably before the call is made (so
// concurrent calls can never pass the limit, and a crash leaves it counted) and given back once
// the call is known not to have reached the upstream. nil for a token without a use limit.
type useHold struct {
	b    *Broker
	id   string
	once sync.Once
}

// settle keeps the use if the call reached the upstream or the cache answered it, and gives it
// back otherwise. Only the first settle counts.
func (u *useHold) settle(reached bool) {
	if u == nil {
		return
	}
	u.once.Do(func() {
		if reached {
			return
		}
		if _, err := u.b.store.UnuseToken(u.id); err != nil {
			u.b.log.Warn("give back a use of a call that did not reach the upstream", "token_id", u.id, "err", err)
		}
	})
}

// upstreamCall is one search's computation, shared by its caller and the goroutine that runs it.
// The computation fills its own CallInfo; the caller copies it into the call's record if it is
// still there when the computation ends, and otherwise the computation writes a record of its own
// (eventSettled), so what was spent is recorded exactly once.
type upstreamCall struct {
	b      *Broker
	caller Caller
	start  time.Time
	use    *useHold
	token  string   // the calling token's id (Resume)
	ci     CallInfo // the computation's; read by the caller only once done

	mu         sync.Mutex
	done, left bool
}

// handOff is called by the caller when it stops waiting for the computation it started.
func (c *upstreamCall) handOff(ci *CallInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.done {
		c.left = true
		return
	}
	ci.CredentialVersion, ci.Credits = c.ci.CredentialVersion, c.ci.Credits
	if c.ci.Event != "" {
		ci.Event = c.ci.Event
	}
}

// finish is called by the computation when it ends; err is its outcome.
func (c *upstreamCall) finish(reached bool, err error) {
	c.use.settle(reached)
	c.mu.Lock()
	c.done = true
	left := c.left
	c.mu.Unlock()
	if !left || !reached {
		return
	}
	c.ci.Event, c.ci.Outcome = eventSettled, nil
	code := "OK"
	if err != nil {
		code = "Unavailable" // what reaches the upstream and fails unanswered maps to
	}
	method := c.ci.Method // the caller's: a search over the HTTP front is recorded as one
	if method == "" {
		method = searchMethod
	}
	rec := CallRecord{Method: method, Caller: c.caller, Code: code, Latency: time.Since(c.start), Info: &c.ci}
	if err := c.b.RecordCall(context.Background(), rec); err != nil {
		c.b.log.Error("audit record of a search settled after its caller left not written", "token_id", c.ci.TokenID,
			"credits", c.ci.Credits, "err", err)
	}
}

// run is the computation: it spends from the budgets and calls the upstream (spendUpstream), then
// settles the use and, if the caller left, the record. The caller entered b.flights for it; run
// exits.
func (c *upstreamCall) run(ctx context.Context, t *store.Token, tool Tool, payload []byte, cost uint64) (*SearchResult, error) {
	b := c.b
	defer b.flights.exit()
	res, reached, err := c.spendRecovered(WithCallInfo(ctx, &c.ci), t, tool, payload, cost)
	c.finish(reached, err)
	return res, err
}

// spendRecovered is spendUpstream with a panic turned into ErrInternal (panics.go), so the
// computation still settles and its callers are answered. Where it panicked is unknown, maybe
// after the request was sent (the answer's redaction and decoding run after), so the call counts
// as one that may have been billed: the expected credits and the use stay spent, as for a call
// sent and never answered.
func (c *upstreamCall) spendRecovered(ctx context.Context, t *store.Token, tool Tool, payload []byte, cost uint64) (res *SearchResult, reached bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			res, reached, err = nil, true, c.b.panicked(v)
			callInfo(ctx).Credits = cost
		}
	}()
	return c.b.spendUpstream(ctx, t, tool, payload, cost, c)
}

// Resume is the call's upstream.Resumer: an attempt that followed a wait inside the upstream
// client (the credential's 429 pause, a retry's backoff; up to limiter.MaxPause) is sent only if
// the token is still live, as after a wait for the credential's limiter (stillLive). It is a
// method of the call, which every search allocates anyway, so a call that never waits costs
// nothing more.
func (c *upstreamCall) Resume(ctx context.Context, w upstream.Wait) error {
	waited := waitedForGate
	if w.Attempt > 1 {
		waited = waitedForRetry
	}
	if err := c.b.stillLive(ctx, c.token, waited); err != nil {
		return &stoppedAfterWait{err}
	}
	return nil
}

// stoppedAfterWait is an upstream call's error when Resume stopped it: the broker's own refusal
// (or its store's failure), which the caller gets as it is, not as the upstream's failure.
type stoppedAfterWait struct{ error }

func (e *stoppedAfterWait) Unwrap() error { return e.error }

// runDetached runs fn on a goroutine of its own and returns its answer, or ctx's error as soon as
// ctx ends; fn goes on (it ends by itself). It is the result cache's Do without the cache.
func (b *Broker) runDetached(ctx context.Context, fn func() (any, int64, error)) (any, error) {
	type answer struct {
		v   any
		err error
	}
	ch := make(chan answer, 1)
	b.workers.run(func() {
		// As the result cache's compute does: a panic fails this call, not brokerd, and its caller
		// is answered (not left waiting for an answer that never comes).
		var a answer
		defer func() {
			if v := recover(); v != nil {
				a = answer{nil, b.panicked(v)}
			}
			ch <- a
		}()
		v, _, err := fn()
		a = answer{v, err}
	})
	select {
	case a := <-ch:
		return a.v, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// callerLeft is the error of a caller that stopped waiting for its search.
func callerLeft(err error) error {
	return fmt.Errorf("the caller stopped waiting before the upstream answered (if the request was sent, its credits are counted and its answer is cached for a retry): %w", err)
}

// searchWorkers is how many goroutines the workers keep: gRPC's stream workers (64) serve as many
// calls at once.
const searchWorkers = 64

// workerIdle is how long an idle worker waits for the next search before it ends.
const workerIdle = 2 * time.Second
