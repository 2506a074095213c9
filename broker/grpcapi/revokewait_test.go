package grpcapi

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/clocktest"
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
