package grpcapi

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// newSettleHarness is the cache harness with a signal each time a Search call has ended on the
// server, its audit record written (the interceptor runs outside the auditor).
func newSettleHarness(t *testing.T) (*harness, <-chan codes.Code) {
	ended := make(chan codes.Code, 64)
	h := newHarnessOpts(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = 10 * time.Minute }, func(o *Options) {
		o.UnaryInterceptors = append(o.UnaryInterceptors, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			resp, err := handler(ctx, req)
			if info.FullMethod == pb.SearchService_Search_FullMethodName {
				ended <- status.Code(err)
			}
			return resp, err
		})
	})
	return h, ended
}

// Issue 15 item 1: cancelling a call after its request reached the upstream must not refund the
// credits the upstream billed. The token has 2 credits a day, the credential 3 a month; the held
// call costs 2. The caller gets its cancel at once; the call goes on, settles 2 credits, caches its
// answer for the retry and records the credits in the audit log and usage; the budget then refuses.
func TestCancelAfterSendingSettlesCredits(t *testing.T) {
	h, ended := newSettleHarness(t)
	h.putKey(t)
	ctx := context.Background()
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{MonthlyCredits: 3}}); err != nil {
		t.Fatal(err)
	}
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BudgetCredits: 2, BudgetPeriod: "day", MaxUses: 5, Label: "canceller"})

	arrived, hold := make(chan struct{}), make(chan struct{})
	h.fake.SetFault(scaviotest.Fault{Arrived: arrived, Hold: hold, CreditsUsed: 2, Times: 1})
	callCtx, cancel := context.WithCancel(withToken(tok.Token))
	go func() { <-arrived; cancel() }()
	_, err := h.search.Search(callCtx, &pb.SearchRequest{Query: "slow"})
	requireGRPCStatus(t, err, codes.Canceled, "")
	// The server's side of the call ends while the upstream still holds the request.
	if code := <-ended; code != codes.Canceled {
		t.Fatalf("the server ended the canceled call with %s while the upstream held it, want Canceled", code)
	}
	close(hold)

	// The retry gets the answer the upstream billed for, from the cache, without a new request.
	before := h.fake.Count()
	r, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "slow"})
	if err != nil || !r.Cached || len(r.Results) == 0 {
		t.Fatalf("retry after the cancel: %v %v, want the cached answer", r, err)
	}
	<-ended
	if h.fake.Count() != before {
		t.Fatal("the retry reached the upstream again")
	}
	// The budget holds the 2 credits: another search is refused before reaching the upstream.
	_, err = h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "another"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "budget of 2/day used")
	<-ended
	if h.fake.Count() != before {
		t.Fatal("an over-budget search reached the upstream")
	}

	ti, err := h.admin.GetToken(ctx, &pb.GetTokenRequest{Id: tok.Id})
	if err != nil {
		t.Fatal(err)
	}
	// Uses: the canceled call reached the upstream and the retry was answered from the cache; the
	// refused one gave its use back.
	if ti.Token.BudgetSpent != 2 || ti.Token.Uses != 2 {
		t.Fatalf("token after the canceled call: budget spent %d, uses %d; want 2 and 2", ti.Token.BudgetSpent, ti.Token.Uses)
	}
	creds, err := h.admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil || len(creds.Credentials) != 1 || creds.Credentials[0].CreditsThisMonth != 2 {
		t.Fatalf("credential's monthly credits after the canceled call: %v %v, want 2", creds, err)
	}

	recs, err := h.admin.ListAudit(ctx, &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var settled, canceled int
	for _, rec := range recs.Records {
		if rec.Method != pb.SearchService_Search_FullMethodName {
			continue
		}
		switch {
		case rec.Event == "settled-after-caller-left":
			settled++
			if rec.Credits != 2 || rec.Code != "OK" || rec.TokenId != tok.Id {
				t.Errorf("settled record: %v, want 2 credits, OK, token %s", rec, tok.Id)
			}
		case rec.Code == "Canceled":
			canceled++
			if rec.Credits != 0 {
				t.Errorf("the caller's record carries %d credits; the settled record has them", rec.Credits)
			}
		}
	}
	if settled != 1 || canceled != 1 {
		t.Fatalf("audit has %d settled and %d canceled search records, want 1 and 1: %v", settled, canceled, recs.Records)
	}
	u, err := h.admin.Usage(ctx, &pb.UsageRequest{By: "token"})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range u.Rows {
		if row.Label == "canceller" && (row.Credits != 2 || row.Calls != 3 || row.CacheHits != 1) {
			t.Fatalf("usage: %v, want 3 calls, 2 credits, 1 cache hit", row)
		}
	}
}

// Issue 15 item 7: a use (--max-uses) is a call that reached the upstream or was answered from
// the cache. Calls brokerd refuses (the credential's shared rate limiter, the budget), calls the
// upstream answers with an error status and calls canceled before sending give their use back, so
// one token holder filling the shared limiter cannot burn another token's uses.
func TestUsesCountOnlyCallsThatReachTheUpstream(t *testing.T) {
	h, ended := newSettleHarness(t)
	h.putKey(t)
	ctx := context.Background()
	uses := func(id string) uint64 {
		t.Helper()
		ti, err := h.admin.GetToken(ctx, &pb.GetTokenRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		return ti.Token.Uses
	}
	victim := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 2})

	// The upstream fails with 500: not a use.
	h.fake.SetFault(scaviotest.Fault{Status: 500})
	_, err := h.search.Search(withToken(victim.Token), &pb.SearchRequest{Query: "q1"})
	requireGRPCStatus(t, err, codes.Unavailable, "500")
	<-ended
	h.fake.SetFault(scaviotest.Fault{})
	if n := uses(victim.Id); n != 0 {
		t.Fatalf("a call answered 500 spent %d uses", n)
	}

	// Another token fills the credential's limiter; the victim's call is refused by brokerd.
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 1, RatePeriod: durationpb.New(time.Hour), MaxWait: durationpb.New(time.Second)}}); err != nil {
		t.Fatal(err)
	}
	hog := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	if _, err := h.search.Search(withToken(hog.Token), &pb.SearchRequest{Query: "hog"}); err != nil {
		t.Fatal(err)
	}
	<-ended
	for range 3 {
		_, err = h.search.Search(withToken(victim.Token), &pb.SearchRequest{Query: "q2"})
		requireGRPCStatus(t, err, codes.ResourceExhausted, "retry in")
		<-ended
	}
	if n := uses(victim.Id); n != 0 {
		t.Fatalf("calls refused by the shared rate limiter spent %d uses", n)
	}
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key", Limits: &pb.CredentialLimits{}}); err != nil {
		t.Fatal(err)
	}

	// A call canceled before it was sent (its context ended already): not a use.
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.b.Search(gone, victim.Token, broker.Caller{}, broker.SearchRequest{Query: "q3"}); err == nil {
		t.Fatal("a search whose caller had gone succeeded")
	}
	if err := h.b.WaitSettled(ctx); err != nil {
		t.Fatal(err)
	}
	if n := uses(victim.Id); n != 0 {
		t.Fatalf("a call canceled before sending spent %d uses", n)
	}

	// A call served by the upstream and one answered from the cache are the two uses.
	for i := range 2 {
		r, err := h.search.Search(withToken(victim.Token), &pb.SearchRequest{Query: "q4"})
		if err != nil || r.Cached != (i == 1) {
			t.Fatalf("call %d: %v %v", i, r, err)
		}
		<-ended
	}
	if n := uses(victim.Id); n != 2 {
		t.Fatalf("a served call and a cache hit spent %d uses, want 2", n)
	}
	_, err = h.search.Search(withToken(victim.Token), &pb.SearchRequest{Query: "q5"})
	requireGRPCStatus(t, err, codes.Unauthenticated, "used all 2 of its uses")
}

// Issue 15 item 8: credits the upstream reports beyond what remains in a budget are recorded
// whole (an overshoot), and the token and credential are refused until the period resets.
// 10 calls of 50 credits against a 10-credit budget: the first is served, the other nine refused.
func TestOvershootIsRecordedAndRefused(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	ctx := context.Background()
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{MonthlyCredits: 20}}); err != nil {
		t.Fatal(err)
	}
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BudgetCredits: 10, BudgetPeriod: "day"})
	h.fake.SetFault(scaviotest.Fault{CreditsUsed: 50})
	served := 0
	for i := range 10 {
		r, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"})
		if err == nil {
			served++
			if r.Credits != 50 {
				t.Fatalf("call %d reported %d credits, want 50", i, r.Credits)
			}
			continue
		}
		requireGRPCStatus(t, err, codes.ResourceExhausted, "budget of 10/day used")
	}
	if served != 1 || h.fake.Count() != 1 {
		t.Fatalf("%d calls served and %d reached the upstream, want 1 and 1", served, h.fake.Count())
	}
	ti, err := h.admin.GetToken(ctx, &pb.GetTokenRequest{Id: tok.Id})
	if err != nil || ti.Token.BudgetSpent != 50 {
		t.Fatalf("budget spent: %v %v, want 50 of 10", ti, err)
	}
	// The credential's ceiling holds the overshoot too, and refuses the next call of any token.
	other := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	_, err = h.search.Search(withToken(other.Token), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "monthly ceiling of 20 credits")
	st, err := h.admin.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(st.Warnings, "\n"); !strings.Contains(w, "50 of its 20 monthly credits used (overshoot 30)") ||
		!strings.Contains(w, "50 of its 10 credits spent this day (overshoot 40)") {
		t.Fatalf("status warnings do not show the overshoots:\n%s", w)
	}
}
