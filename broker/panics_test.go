package broker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/metrics"
)

// syncBuffer is a log sink the workers and the test may use at once.
type syncBuffer = logtest.Buffer

// A panic in a search's computation (here in the answer's decoding, where a redaction or decoding
// bug would strike) fails that call, and the caller sharing it through the result cache, with
// ErrInternal (mapped to INTERNAL by grpcapi's table); it is logged once, without the body the
// panic's value carried, and counted; the next calls are answered. Without the recovery the
// panic ends the test binary.
func TestComputationPanicFailsOnlyItsCalls(t *testing.T) {
	b, st, arrived, hold := newSettleBroker(t, 1)
	logs := &syncBuffer{}
	b.log = slog.New(slog.NewTextHandler(logs, nil))
	var armed atomic.Bool
	b.decode = func(body []byte) (any, error) {
		if armed.CompareAndSwap(true, false) {
			panic(string(body)) // a panic value that carries the answer, which must not be logged
		}
		return decodeAnswer(body)
	}
	raw, rec := mintFor(t, b, MintRequest{BudgetCredits: 100, BudgetPeriod: "day"})
	panicsBefore := panicsCounted(t)
	const marker = "zebra-marker-query" // the fake upstream's answer repeats the query

	// Two callers share one computation (the second waits on the first's in the result cache).
	armed.Store(true)
	errs := make(chan error, 2)
	search := func() {
		_, err := b.Search(context.Background(), raw, me, SearchRequest{Query: marker})
		errs <- err
	}
	go search()
	<-arrived // the first caller's request is at the upstream, held
	go search()
	for b.econ.cache.Waiting() != 1 { // the second caller is parked on the first's computation
		time.Sleep(time.Millisecond)
	}
	close(hold)
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrInternal) {
			t.Fatalf("a caller sharing the panicking computation got %v, want ErrInternal", err)
		} else if strings.Contains(err.Error(), marker) {
			t.Fatalf("the error quotes the answer: %v", err)
		}
	}
	// The failure was not cached: the same search computes again and is answered.
	res, err := b.Search(context.Background(), raw, me, SearchRequest{Query: marker})
	if err == nil {
		var results []Result
		if results, _, err = res.Decoded(); err == nil && len(results) == 0 {
			err = errors.New("no results")
		}
	}
	if err != nil || res.Cached {
		t.Fatalf("the search after the panic: %v (cached %v), want a fresh answer", err, res != nil && res.Cached)
	}
	// Without the cache (runDetached) too.
	armed.Store(true)
	if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: marker, NoCache: true}); !errors.Is(err, ErrInternal) {
		t.Fatalf("no_cache search whose computation panicked: %v, want ErrInternal", err)
	}
	if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: marker, NoCache: true}); err != nil {
		t.Fatalf("no_cache search after the panic: %v", err)
	}

	if err := b.WaitSettled(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := panicsCounted(t) - panicsBefore; n != 2 {
		t.Fatalf("credbroker_recovered_panics_total grew by %v, want 2", n)
	}
	out := logs.String()
	if n := strings.Count(out, "computation panicked"); n != 2 {
		t.Fatalf("%d panic log lines for 2 panics (one shared by two callers), want 2:\n%s", n, out)
	}
	if !strings.Contains(out, "panic_type=string") || !strings.Contains(out, "stack=") {
		t.Fatalf("the panic log lacks its type or stack:\n%s", out)
	}
	if strings.Contains(out, marker) || strings.Contains(out, tokenCacheKey) {
		t.Fatalf("the log holds the upstream answer or the key:\n%s", out)
	}
	// A panicking call may have been billed (it may have panicked after sending): its expected
	// credit stays spent, as for a call sent and never answered. 4 calls reached the upstream.
	if tok, err := st.GetToken(rec.ID); err != nil || tok.BudgetSpent != 4 {
		t.Fatalf("budget spent %d (%v), want 4: the panicked calls counted as possibly billed", tok.BudgetSpent, err)
	}
}

func panicsCounted(t *testing.T) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.Panics.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// The workers' last stop: a function that leaves a panic unrecovered is reported, and neither the
// process nor the worker ends (the next function runs on it).
func TestWorkerSurvivesAPanic(t *testing.T) {
	panics := make(chan any, 1)
	w := newWorkers(1, func(v any) { panics <- v })
	defer w.stop()
	w.run(func() { panic("boom") })
	if v := <-panics; v != "boom" {
		t.Fatalf("onPanic got %v", v)
	}
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	if n := w.n.Load(); n != 1 {
		t.Fatalf("%d workers after a panic and a second run, want the one worker kept", n)
	}
}
