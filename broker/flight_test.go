package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

// Identical concurrent searches share one computation (the result cache's single flight), which
// runs on the context of the caller that started it. A refusal that only that caller's deadline
// caused (the wait it needed passes it) is that caller's own: a caller sharing the computation
// with more time computes again and is judged by its own deadline, as it would have been had it
// come alone. A refusal for one of brokerd's own limits (--max-wait, the longest Retry-After it
// waits) is everyone's, and stays shared. Every wait here is on a fake clock; the deadlines are real (the limiter and the
// gate compare them with the fake clock, which starts at the real time).
func TestSharedSearchRefusedForTheStartersDeadlineOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup makes the next upstream call (the shared one) need a minute's wait.
		setup func(t *testing.T, b *Broker, fake *scaviotest.Server, raw string)
		// wantStarter is a piece of the starter's refusal.
		wantStarter string
		// shared: the refusal is everyone's (a limit of brokerd's, not the starter's deadline),
		// so the other caller gets it too instead of computing again.
		shared bool
	}{
		{"a slot of the credential's rate limit", func(t *testing.T, b *Broker, _ *scaviotest.Server, raw string) {
			if _, err := b.SetLimits(context.Background(), "scavio_api_key", store.Limits{RateLimit: 1, RatePeriod: time.Minute, Burst: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: "takes the free slot"}); err != nil {
				t.Fatal(err)
			}
		}, "has no free slot", false},
		{"the credential's 429 pause", func(t *testing.T, b *Broker, fake *scaviotest.Server, raw string) {
			fake.SetFault(scaviotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "60", Times: 1})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := b.Search(ctx, raw, me, SearchRequest{Query: "closes the gate"}); !errors.Is(err, upstream.ErrRateLimited) {
				t.Fatalf("the call that closes the gate: %v, want ErrRateLimited", err)
			}
		}, "asked every caller of this key to wait", false},
		{"the upstream's Retry-After on the shared attempt", func(t *testing.T, b *Broker, fake *scaviotest.Server, raw string) {
			fake.SetFault(scaviotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "60", Times: 1})
		}, "retry after 1m0s", false},
		{"the credential's --max-wait", func(t *testing.T, b *Broker, _ *scaviotest.Server, raw string) {
			if _, err := b.SetLimits(context.Background(), "scavio_api_key", store.Limits{RateLimit: 1, RatePeriod: time.Minute, Burst: 1, MaxWait: 10 * time.Second}); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Search(context.Background(), raw, me, SearchRequest{Query: "takes the free slot"}); err != nil {
				t.Fatal(err)
			}
		}, "has no free slot", true},
		{"a Retry-After longer than brokerd waits", func(t *testing.T, b *Broker, fake *scaviotest.Server, raw string) {
			fake.SetFault(scaviotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "600", Times: 1})
		}, "retry after 10m0s", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, fake, fc := newFlightBroker(t)
			raw, _ := mintFor(t, b, MintRequest{})
			tc.setup(t, b, fake, raw)
			// The starter's computation waits until the other caller shares it.
			spawned, release := make(chan struct{}, 1), make(chan struct{})
			var computations atomic.Int32
			b.econ.cache.SetSpawn(func(f func()) {
				computations.Add(1)
				select {
				case spawned <- struct{}{}:
				default:
				}
				go func() { <-release; f() }()
			})
			req := SearchRequest{Query: "shared"}
			type answer struct {
				res *SearchResult
				err error
			}
			search := func(d time.Duration) <-chan answer {
				ch := make(chan answer, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), d)
					defer cancel()
					res, err := b.Search(ctx, raw, me, req)
					ch <- answer{res, err}
				}()
				return ch
			}
			starter := search(30 * time.Second)
			<-spawned // the starter's computation is in flight
			joiner := search(10 * time.Minute)
			waitUntil(t, "the second caller to share the computation", func() bool { return b.econ.cache.Waiting() == 1 })
			waiting := fc.Waiting()
			close(release)
			a := <-starter
			starterErr := a.err
			if !errors.Is(a.err, ErrRateLimited) && !errors.Is(a.err, upstream.ErrRateLimited) || !strings.Contains(fmt.Sprint(a.err), tc.wantStarter) {
				t.Fatalf("the starter (30s): %v, want refused for a wait (%q)", a.err, tc.wantStarter)
			}
			if tc.shared {
				if a := <-joiner; fmt.Sprint(a.err) != fmt.Sprint(starterErr) {
					t.Fatalf("the caller with 10m: %v, want the starter's refusal, which is everyone's", a.err)
				}
				if n := computations.Load(); n != 1 {
					t.Fatalf("%d computations, want 1: the refusal is everyone's and was not shared", n)
				}
				return
			}
			// The other caller computes again and waits its minute (a refusal comes at once).
			answered := false
			waitUntil(t, "the second caller to wait or be answered", func() bool {
				select {
				case a = <-joiner:
					answered = true
					return true
				default:
					return fc.Waiting() > waiting
				}
			})
			if !answered {
				fc.Advance(time.Minute)
				a = <-joiner
			}
			if a.err != nil {
				t.Fatalf("the caller with 10m was refused: %v", a.err)
			}
			if n := computations.Load(); n != 2 {
				t.Fatalf("%d computations, want 2 (the second caller's own)", n)
			}
		})
	}
}

// newFlightBroker is a broker with the result cache on, a stored key, and every clock (its Now,
// the limiter's and the gate's, the upstream client's sleeps) one fake clock at the real time.
func newFlightBroker(t *testing.T) (*Broker, *scaviotest.Server, *clocktest.Fake) {
	t.Helper()
	st := storetest.Open(t, t.TempDir(), store.Options{})
	fake := scaviotest.NewServer(tokenCacheKey)
	fc := clocktest.New(time.Now())
	up, err := upstream.New(upstream.Config{BaseURL: fake.URL, MaxRetryAfter: 2 * time.Minute,
		Sleep: func(ctx context.Context, d time.Duration) error {
			select {
			case <-fc.After(d):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Store: st, Upstream: up, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: fc.Now, Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		b.Drain(ctx)
		st.Close()
		fake.Close()
	})
	if _, err := st.PutCredential("scavio_api_key", []byte(tokenCacheKey), fc.Now()); err != nil {
		t.Fatal(err)
	}
	return b, fake, fc
}
