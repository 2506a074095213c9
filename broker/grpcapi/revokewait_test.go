package grpcapi

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A call parked for its credential's limiter slot (for as long as its deadline allows, with no
// deadline and no --max-wait indefinitely) is not sent once its token was revoked or expired
// meanwhile: it is refused when its slot comes, nothing reaches the upstream, and its use is given
// back. Otherwise calls queued before a revoke would spend the key for as long as the queue lasts.
func TestTokenRevokedOrExpiredWhileWaitingForASlot(t *testing.T) {
	fc := clocktest.New(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	h := newHarnessWith(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1; c.Clock = fc })
	h.putKey(t)
	ctx := context.Background()
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 1, RatePeriod: durationpb.New(time.Minute), Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		during func(id string)
		want   string
	}{
		{"revoked", func(id string) {
			if _, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: id}); err != nil {
				t.Fatal(err)
			}
		}, "revoked"},
		{"expired", func(string) { h.clock.Add(2 * time.Hour) }, "expired"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 5, Ttl: durationpb.New(time.Hour)})
			// The first call takes a slot that is free (a minute after the last one); the second
			// waits a minute for the next.
			fc.Advance(time.Minute)
			if _, err := h.search.Search(withToken(m.Token), &pb.SearchRequest{Query: "first " + c.name}); err != nil {
				t.Fatal(err)
			}
			waiting := fc.Waiting()
			done := make(chan error, 1)
			go func() {
				_, err := h.search.Search(withToken(m.Token), &pb.SearchRequest{Query: "second " + c.name})
				done <- err
			}()
			for deadline := time.Now().Add(10 * time.Second); fc.Waiting() == waiting; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the second call never waited for a slot")
				}
			}
			before := len(h.fake.Requests())
			c.during(m.Id)
			fc.Advance(time.Minute)
			err := <-done
			requireGRPCStatus(t, err, codes.Unauthenticated, c.want)
			// Refused by the check after the wait, not by authentication: a call that had not yet
			// authenticated when the token changed would pass the assertions above without it.
			requireGRPCStatus(t, err, codes.Unauthenticated, "while the call waited for a slot")
			if n := len(h.fake.Requests()) - before; n != 0 {
				t.Fatalf("the upstream got %d calls with a token %s while the call waited", n, c.name)
			}
			ti, err := h.admin.GetToken(ctx, &pb.GetTokenRequest{Id: m.Id})
			if err != nil {
				t.Fatal(err)
			}
			if ti.GetToken().GetUses() != 1 {
				t.Fatalf("%d uses counted, want 1 (the refused call's given back)", ti.GetToken().GetUses())
			}
		})
	}
}

// The upstream client waits inside a call too: after a 429 (Retry-After, the credential's gate
// pause, up to an hour) and between retries (the backoff). A call whose token was revoked or
// expired during that wait sends no further attempt: it is refused as after a wait for a limiter
// slot, its use and its credits are given back (the attempt before was answered with an error
// status, which the upstream does not bill).
func TestTokenRevokedOrExpiredWhileTheUpstreamCallWaits(t *testing.T) {
	fc := clocktest.New(time.Now())
	sleepOnFake := func(ctx context.Context, d time.Duration) error {
		select {
		case <-fc.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h := newHarnessUpstream(t, func(c *upstream.Config) {
		c.Sleep, c.BackoffBase, c.MaxRetryAfter = sleepOnFake, 10*time.Second, time.Minute
	}, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1; c.Clock = fc }, nil)
	h.putKey(t)
	ctx := context.Background()
	revoke := func(id string) {
		if _, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	expire := func(string) { h.clock.Add(2 * time.Hour) }
	pause := scaviotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "30", Times: 1}
	outage := scaviotest.Fault{Status: http.StatusServiceUnavailable, Times: 1} // retried after the backoff (5-10s)
	for _, c := range []struct {
		name   string
		fault  scaviotest.Fault
		during func(id string)
		want   string
		reason string
	}{
		{"revoked during the 429 pause", pause, revoke, "was revoked", broker.ReasonTokenRevoked},
		{"expired during the 429 pause", pause, expire, "expired at", broker.ReasonTokenExpired},
		{"revoked during the backoff", outage, revoke, "was revoked", broker.ReasonTokenRevoked},
		{"expired during the backoff", outage, expire, "expired at", broker.ReasonTokenExpired},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 5, BudgetCredits: 10, BudgetPeriod: "day",
				Ttl: durationpb.New(time.Hour)})
			h.fake.SetFault(c.fault)
			before, waiting := len(h.fake.Requests()), fc.Waiting()
			done := make(chan error, 1)
			go func() {
				_, err := h.search.Search(withToken(m.Token), &pb.SearchRequest{Query: c.name})
				done <- err
			}()
			// The first attempt was answered with the fault and the call waits (on the fake clock)
			// to try again.
			for deadline := time.Now().Add(10 * time.Second); fc.Waiting() == waiting; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the call never waited to retry")
				}
			}
			c.during(m.Id)
			fc.Advance(30 * time.Second) // past the Retry-After and the longest backoff
			err := <-done
			requireGRPCStatus(t, err, codes.Unauthenticated, c.want)
			requireGRPCStatus(t, err, codes.Unauthenticated, "while the call waited to retry the upstream")
			if info, _ := details(t, err); info.Reason != c.reason {
				t.Errorf("reason %s, want %s", info.Reason, c.reason)
			}
			if n := len(h.fake.Requests()) - before; n != 1 {
				t.Fatalf("the upstream got %d requests, want 1: the retry went with a token %s", n, c.name)
			}
			ti, err := h.admin.GetToken(ctx, &pb.GetTokenRequest{Id: m.Id})
			if err != nil {
				t.Fatal(err)
			}
			if got := ti.GetToken(); got.GetUses() != 0 || got.GetBudgetSpent() != 0 {
				t.Fatalf("%d uses and %d credits counted, want 0 and 0 (nothing the upstream bills was sent)", got.GetUses(), got.GetBudgetSpent())
			}
		})
	}
}
