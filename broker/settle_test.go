package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

// newSettleBroker is a broker on a fake upstream that holds the next request until the test says:
// arrived receives when it reaches the upstream, closing hold answers it with credits.
func newSettleBroker(t *testing.T, credits int) (b *Broker, st *store.Store, arrived <-chan struct{}, hold chan struct{}) {
	t.Helper()
	st = storetest.Open(t, t.TempDir(), store.Options{})
	fake := scaviotest.NewServer(tokenCacheKey)
	arr, hold := make(chan struct{}), make(chan struct{})
	fake.SetFault(scaviotest.Fault{Arrived: arr, Hold: hold, CreditsUsed: credits, Times: 1})
	up, err := upstream.New(upstream.Config{BaseURL: fake.URL, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	b, err = New(Config{Store: st, Upstream: up, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clk.Now, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-hold:
		default:
			close(hold)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		b.Drain(ctx)
		st.Close()
		fake.Close()
	})
	if _, err := st.PutCredential("scavio_api_key", []byte(tokenCacheKey), clk.Now()); err != nil {
		t.Fatal(err)
	}
	return b, st, arr, hold
}

// searchLeaving runs a search whose caller gives up once the upstream has the request, and returns
// the caller's error, which must come while the upstream still holds the request. The call's
// context is parent's.
func searchLeaving(t *testing.T, parent context.Context, b *Broker, raw string, arrived <-chan struct{}, req SearchRequest) error {
	t.Helper()
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	go func() { <-arrived; cancel() }()
	done := make(chan error, 1)
	go func() {
		_, err := b.Search(ctx, raw, me, req)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute): // a guard against a hang, not a race: nothing else ends the wait
		t.Fatal("the caller was kept waiting for the upstream after it gave up")
		return nil
	}
}

// The caller that gives up after sending gets its error at once (the upstream still holds the
// request), and the call settles the credits and the use the upstream billed afterwards. Without
// the result cache (no_cache), too.
func TestCallerLeavesAfterSending(t *testing.T) {
	b, st, arrived, hold := newSettleBroker(t, 2)
	raw, rec := mintFor(t, b, MintRequest{BudgetCredits: 2, BudgetPeriod: "day", MaxUses: 3})
	err := searchLeaving(t, context.Background(), b, raw, arrived, SearchRequest{Query: "slow", NoCache: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("caller's error: %v, want Canceled", err)
	}
	close(hold)
	if err := b.WaitSettled(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok, err := st.GetToken(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.BudgetSpent != 2 || tok.Uses != 1 {
		t.Fatalf("after the caller left: budget spent %d, uses %d; want the 2 credits billed and 1 use", tok.BudgetSpent, tok.Uses)
	}
	if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: "next", NoCache: true}); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("next search on a spent budget: %v, want refused", err)
	}
	if tok, _ := st.GetToken(rec.ID); tok.Uses != 1 {
		t.Fatalf("the refused search kept its use: %d uses", tok.Uses)
	}
}

// Shutdown waits for the searches whose callers left; past its deadline it cuts them off, and
// counts them as charged (they were sent), before the store closes. No new search starts.
func TestDrainCutsOffSentCallsAsCharged(t *testing.T) {
	b, st, arrived, _ := newSettleBroker(t, 5)
	raw, rec := mintFor(t, b, MintRequest{BudgetCredits: 10, BudgetPeriod: "day", MaxUses: 3})
	if err := searchLeaving(t, context.Background(), b, raw, arrived, SearchRequest{Query: "slow"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("caller's error: %v, want Canceled", err)
	}
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Drain(expired); err == nil {
		t.Fatal("Drain past its deadline with a call still held reported nothing cut off")
	}
	tok, err := st.GetToken(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.BudgetSpent != 1 || tok.Uses != 1 {
		t.Fatalf("after a sent call was cut off: budget spent %d, uses %d; want the expected credit and the use kept", tok.BudgetSpent, tok.Uses)
	}
	recs, err := st.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Event != eventSettled || recs[0].Credits != 1 || recs[0].Code != "Unavailable" {
		t.Fatalf("audit after the cut-off: %+v, want one settled record of 1 credit", recs)
	}
	if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: "after"}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("search after Drain: %v, want ErrShuttingDown", err)
	}
}

// The record a search writes when its caller left names the caller's method: a search over the
// HTTP front is recorded as one (Usage counts both), not as a gRPC Search.
func TestSettleRecordNamesTheCallersMethod(t *testing.T) {
	for _, tc := range []struct{ name, method, want string }{
		{"grpc", searchMethod, searchMethod},
		{"http front", HTTPSearchMethod, HTTPSearchMethod},
		{"http front google", HTTPGoogleMethod, HTTPGoogleMethod},
		{"unnamed", "", searchMethod},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, st, arrived, hold := newSettleBroker(t, 1)
			raw, _ := mintFor(t, b, MintRequest{})
			ctx := WithCallInfo(context.Background(), &CallInfo{Method: tc.method})
			if err := searchLeaving(t, ctx, b, raw, arrived, SearchRequest{Query: "slow", NoCache: true}); !errors.Is(err, context.Canceled) {
				t.Fatalf("caller's error: %v, want Canceled", err)
			}
			close(hold)
			if err := b.WaitSettled(context.Background()); err != nil {
				t.Fatal(err)
			}
			recs, err := st.ListAudit(0, time.Time{}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1 || recs[0].Event != eventSettled || recs[0].Method != tc.want {
				t.Fatalf("audit: %+v, want one settled record under %s", recs, tc.want)
			}
		})
	}
}

// Computations that outlive their callers are bounded: at maxFlights in flight the next search is
// refused at once as rate limited (retry in 1s), and one ending makes room again.
func TestFlightsAreBounded(t *testing.T) {
	f := newFlights()
	for i := range maxFlights {
		if err := f.enter(); err != nil {
			t.Fatalf("enter %d: %v", i, err)
		}
	}
	err := f.enter()
	var r *Refusal
	if !errors.Is(err, ErrRateLimited) || !errors.As(err, &r) || r.Reason != ReasonRateLimited || r.RetryAfter != time.Second {
		t.Fatalf("enter past maxFlights: %v, want RATE_LIMITED with a 1s retry", err)
	}
	f.exit()
	if err := f.enter(); err != nil {
		t.Fatalf("enter after one exit: %v", err)
	}
}
