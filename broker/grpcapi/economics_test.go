package grpcapi

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newCacheHarness(t *testing.T) *harness {
	return newHarnessWith(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = 10 * time.Minute })
}

func TestResultCache(t *testing.T) {
	h := newCacheHarness(t)
	h.putKey(t)
	a := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, Label: "a"})
	b := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, Label: "b"})
	s1 := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, SharedCache: true})
	s2 := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, SharedCache: true})

	first, err := h.search.Search(withToken(a.Token), &pb.SearchRequest{Query: "Golang  generics"})
	if err != nil || first.Cached || first.Credits != 1 {
		t.Fatalf("first: %v %v", first, err)
	}
	before := h.fake.Count()
	h.clock.Add(30 * time.Second)
	var hdr metadata.MD
	// Same request after normalisation (the body is rebuilt from validated fields).
	second, err := h.search.Search(withToken(a.Token), &pb.SearchRequest{Query: "Golang  generics", NumResults: 5}, grpc.Header(&hdr))
	if err != nil || !second.Cached || second.CacheAge.AsDuration() != 30*time.Second || second.Credits != 0 || len(second.Results) != 5 {
		t.Fatalf("second: cached=%v age=%v credits=%d err=%v", second.GetCached(), second.GetCacheAge(), second.GetCredits(), err)
	}
	if got := hdr.Get("x-credbroker-cache"); len(got) != 1 || got[0] != "hit; age=30s" {
		t.Fatalf("cache header %v", got)
	}
	if h.fake.Count() != before {
		t.Fatal("a cache hit reached the upstream")
	}
	// The audit says what each call spent and what the hit saved.
	recs, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var searches []*pb.AuditRecord
	for _, r := range recs.Records {
		if r.Method == pb.SearchService_Search_FullMethodName {
			searches = append(searches, r)
		}
	}
	if len(searches) != 2 || searches[0].Credits != 1 || searches[0].CreditsSaved != 0 || searches[1].Credits != 0 || searches[1].CreditsSaved != 1 {
		t.Fatalf("search records: %v", searches)
	}
	// Another token does not see a's entry; no_cache forces a fresh call.
	if r, _ := h.search.Search(withToken(b.Token), &pb.SearchRequest{Query: "Golang  generics"}); r.Cached {
		t.Fatal("token b was served token a's cached result")
	}
	if r, _ := h.search.Search(withToken(a.Token), &pb.SearchRequest{Query: "Golang  generics", NoCache: true}); r.Cached {
		t.Fatal("no_cache served a cached result")
	}
	// Shared-cache tokens share.
	h.search.Search(withToken(s1.Token), &pb.SearchRequest{Query: "shared"})
	if r, _ := h.search.Search(withToken(s2.Token), &pb.SearchRequest{Query: "shared"}); !r.Cached {
		t.Fatal("shared-cache tokens do not share")
	}
	// Expiry.
	h.clock.Add(11 * time.Minute)
	if r, _ := h.search.Search(withToken(a.Token), &pb.SearchRequest{Query: "Golang  generics"}); r.Cached {
		t.Fatal("expired entry served")
	}

	// Audit and usage know about hits and the credits they saved.
	u, err := h.admin.Usage(context.Background(), &pb.UsageRequest{By: "token"})
	if err != nil {
		t.Fatal(err)
	}
	byLabel := map[string]*pb.UsageRow{}
	for _, r := range u.Rows {
		byLabel[r.Label] = r
	}
	if ra := byLabel["a"]; ra == nil || ra.Calls != 4 || ra.CacheHits != 1 || ra.Credits != 3 {
		t.Fatalf("usage of a: %v", ra)
	}
	if u.CreditsSaved != 2 {
		t.Fatalf("credits saved %d, want 2", u.CreditsSaved)
	}
	uc, _ := h.admin.Usage(context.Background(), &pb.UsageRequest{By: "credential"})
	if len(uc.Rows) != 1 || uc.Rows[0].Key != "scavio_api_key" || uc.Rows[0].Calls != 7 {
		t.Fatalf("usage by credential: %v", uc.Rows)
	}
}

// A cache hit answers with the same results and metadata as the call that reached the upstream,
// though it sends them as bytes kept with the cached answer (the first hit encodes them, later hits
// reuse them), and as many as each request asked for.
func TestCacheHitSameAnswer(t *testing.T) {
	h := newCacheHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search", "google_search"}})
	for _, req := range []*pb.SearchRequest{
		{Query: "same answer"},
		{Query: "same answer", NumResults: 3},
		{Tool: "google_search", Query: "same answer"},
	} {
		miss, err := h.search.Search(withToken(tok.Token), req)
		if err != nil || miss.Cached || len(miss.Results) == 0 || miss.Metadata == nil {
			t.Fatalf("%v: miss %v, %v", req, miss, err)
		}
		for i := range 3 {
			hit, err := h.search.Search(withToken(tok.Token), req)
			if err != nil || !hit.Cached || hit.Credits != 0 {
				t.Fatalf("%v: hit %d: %v, %v", req, i, hit, err)
			}
			// Everything but what says where the answer came from is the same message.
			hit.Cached, hit.CacheAge, hit.Credits = false, nil, miss.Credits
			if !proto.Equal(hit, miss) {
				t.Fatalf("%v: hit %d differs from the miss:\n%v\n%v", req, i, hit, miss)
			}
		}
	}
}

func TestCacheSingleFlight(t *testing.T) {
	h := newCacheHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	h.fake.SetFault(scaviotest.Fault{Delay: 300 * time.Millisecond})
	before := h.fake.Count()
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "same"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := h.fake.Count() - before; n != 1 {
		t.Fatalf("10 concurrent identical searches made %d upstream calls, want 1", n)
	}
}

// 20 concurrent clients share one key limited to 10 calls per second (the 10/m, scaled):
// the upstream never sees more than 10 calls in any second and no client gets a raw 429.
func TestCredentialRateLimitSharedByAllTokens(t *testing.T) {
	h := newHarness(t) // cache off: every call must reach the upstream
	h.putKey(t)
	if _, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 10, RatePeriod: durationpb.New(time.Second), Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	before := len(h.fake.Requests())
	var wg sync.WaitGroup
	start := time.Now()
	for i := range 20 {
		tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(withToken(tok), 10*time.Second)
			defer cancel()
			if _, err := h.search.Search(ctx, &pb.SearchRequest{Query: "q" + string(rune('a'+i))}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	reqs := h.fake.Requests()[before:]
	if len(reqs) != 20 {
		t.Fatalf("upstream saw %d calls, want 20", len(reqs))
	}
	var times []time.Time
	for _, r := range reqs {
		times = append(times, r.Time)
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	// Arrival times at the upstream carry scheduling jitter, so the window is half a second: the
	// limiter lets at most 6 calls into any 500 ms (burst 1, then one every 100 ms); more than 10
	// would take a limiter that lets calls through early, not jitter of up to 400 ms.
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < 500*time.Millisecond; j++ {
			n++
		}
		if n > 10 {
			t.Fatalf("%d upstream calls within half a second", n)
		}
	}
	// And the 20 calls cannot have taken less than the 19 intervals the limit imposes: a lower
	// bound measured around the whole run, which no scheduling delay can make shorter.
	if took := time.Since(start); took < 1900*time.Millisecond {
		t.Fatalf("20 calls at 10/s (burst 1) took %s, want at least 1.9s", took)
	}

	// A caller whose deadline comes before its slot is told how long to wait, without waiting.
	// One call a minute, burst 1: one finished call takes the only slot for the next minute, so
	// a caller with a 2 s deadline cannot have one — whatever the scheduler does (no fill
	// goroutines racing the late call for slots).
	if _, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 1, RatePeriod: durationpb.New(time.Minute), Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "fill"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(withToken(tok), 2*time.Second)
	defer cancel()
	asked := time.Now()
	_, err := h.search.Search(ctx, &pb.SearchRequest{Query: "late"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "retry in")
	if ctx.Err() != nil {
		t.Fatalf("the late caller waited out its deadline (%s) instead of being told at once", time.Since(asked))
	}
}

// A 429 with Retry-After pauses every caller of the key until then, instead of each hitting 429.
func TestLimiterLearnsFromUpstream(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 100, RatePeriod: durationpb.New(time.Second), Burst: 10}})
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	h.fake.SetFault(scaviotest.Fault{Status: 429, RetryAfter: "1", Times: 1})
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "rate limit")
	start, before := time.Now(), h.fake.Count()
	ctx, cancel := context.WithTimeout(withToken(tok), 5*time.Second)
	defer cancel()
	if _, err := h.search.Search(ctx, &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 800*time.Millisecond {
		t.Fatalf("the next call went after %s; the upstream asked for 1s", waited)
	}
	if h.fake.Count() != before+1 {
		t.Fatal("calls reached the upstream during the pause")
	}
}

func TestTokenBudgetAndCredentialCeiling(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	ctx := context.Background()
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search", "google_search"}, BudgetCredits: 4, BudgetPeriod: "day"}).Token
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"}); err != nil { // 1
		t.Fatal(err)
	}
	rich := &pb.SearchRequest{Tool: "google_search", Query: "q", Google: &pb.GoogleSearchOptions{LightRequest: proto.Bool(false)}}
	if r, err := h.search.Search(withToken(tok), rich); err != nil || r.Credits != 2 { // 3
		t.Fatalf("rich search: %v %v", r, err)
	}
	// A failed upstream call is refunded.
	h.fake.SetFault(scaviotest.Fault{Status: 500, Times: 5})
	h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	h.fake.SetFault(scaviotest.Fault{})
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"}); err != nil { // 4
		t.Fatal(err)
	}
	before := h.fake.Count()
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "budget of 4/day used; resets at")
	if h.fake.Count() != before {
		t.Fatal("an over-budget call reached the upstream")
	}
	list, _ := h.admin.ListTokens(ctx, &pb.ListTokensRequest{})
	for _, ti := range list.Tokens {
		if ti.BudgetCredits == 4 && ti.BudgetSpent != 4 {
			t.Fatalf("budget spent %d, want 4", ti.BudgetSpent)
		}
	}

	// Credential ceiling: warn at 80%, refuse past 100%.
	if _, err := h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key", Limits: &pb.CredentialLimits{MonthlyCredits: 5}}); err != nil {
		t.Fatal(err)
	}
	free := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	for i := range 4 {
		if _, err := h.search.Search(withToken(free), &pb.SearchRequest{Query: "q"}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	st, _ := h.admin.Status(ctx, &pb.StatusRequest{})
	if !strings.Contains(strings.Join(st.Warnings, "\n"), "4 of its 5 monthly credits used (80%)") {
		t.Fatalf("no 80%% warning: %v", st.Warnings)
	}
	h.search.Search(withToken(free), &pb.SearchRequest{Query: "q"})
	_, err = h.search.Search(withToken(free), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "monthly ceiling of 5 credits")

	_, err = h.admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), BudgetCredits: 5, BudgetPeriod: "week"})
	requireGRPCStatus(t, err, codes.InvalidArgument, "day or month")
	_, err = h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "scavio_api_key", Limits: &pb.CredentialLimits{Burst: 3}})
	requireGRPCStatus(t, err, codes.InvalidArgument, "need a rate limit")
	_, err = h.admin.SetCredentialLimits(ctx, &pb.SetCredentialLimitsRequest{Name: "nope", Limits: &pb.CredentialLimits{MonthlyCredits: 3}})
	requireGRPCStatus(t, err, codes.NotFound, "not found")
}

// TestCacheSavingsWorkload is the evidence line for BENCHMARKS.md: a workload in which 30% of the
// searches repeat an earlier one. scripts/bench.sh runs it with -v and copies the CACHE line.
func TestCacheSavingsWorkload(t *testing.T) {
	h := newCacheHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	const calls = 500
	var seen []string
	unique := 0
	before := h.fake.Count()
	for i := range calls {
		q := fmt.Sprintf("query %d", i)
		if i%10 < 3 && len(seen) > 0 { // 30% repeat an earlier query
			q = seen[(i*7919)%len(seen)]
		} else {
			unique++
		}
		seen = append(seen, q)
		if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: q}); err != nil {
			t.Fatal(err)
		}
	}
	upstreamCalls := h.fake.Count() - before
	if upstreamCalls != unique {
		t.Fatalf("upstream calls %d, want one per unique query (%d)", upstreamCalls, unique)
	}
	t.Logf("CACHE workload: %d broker calls with 30%% repeats -> %d upstream calls (%.0f%% of credits saved)",
		calls, upstreamCalls, 100*float64(calls-upstreamCalls)/float64(calls))
}

// After a 429 with a long Retry-After, every caller of the key is told to wait without reaching
// the upstream; rotating the credential gives the new key an open gate, since the wait was the
// old key's.
func TestRateLimitPauseEndsWithRotation(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	h.fake.SetFault(scaviotest.Fault{Status: 429, RetryAfter: "3600", Times: 1})
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "retry after 1h0m0s")

	before := h.fake.Count()
	_, err = h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q2"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "retry after 1h0m0s")
	if n := h.fake.Count() - before; n != 0 {
		t.Fatalf("a call during the upstream's wait reached it %d times", n)
	}

	const next = "sk_test_after_the_pause"
	h.fake.AddKey(next)
	if _, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: "scavio_api_key", Value: []byte(next)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q3"}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
}

// A call held for a limiter slot says how long, in the response and a header, so a client can tell
// the wait from a slow upstream. Rate 1/2s with burst 1 on a fake clock: the second call's slot is
// exactly 2s after the first's. (Nothing is asserted about the first call.)
func TestSearchReportsRateLimitWait(t *testing.T) {
	fc := clocktest.New(time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	h := newHarnessWith(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1; c.Clock = fc })
	h.putKey(t)
	if _, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: "scavio_api_key",
		Limits: &pb.CredentialLimits{RateLimit: 1, RatePeriod: durationpb.New(2 * time.Second), Burst: 1}}); err != nil {
		t.Fatal(err)
	}
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "first"}); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		resp *pb.SearchResponse
		hdr  metadata.MD
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		var a answer
		a.resp, a.err = h.search.Search(withToken(tok), &pb.SearchRequest{Query: "second"}, grpc.Header(&a.hdr))
		done <- a
	}()
	// The second call is parked on the fake clock until it is advanced past its slot.
	for deadline := time.Now().Add(10 * time.Second); fc.Waiting() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second call never waited for a slot")
		}
	}
	fc.Advance(2 * time.Second)
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	if got := a.resp.GetRateLimitWait().AsDuration(); got != 2*time.Second {
		t.Fatalf("rate_limit_wait %v, want 2s", got)
	}
	if got := a.hdr.Get(RateLimitWaitHeader); len(got) != 1 || got[0] != "2.000" {
		t.Fatalf("%s header %v, want [2.000]", RateLimitWaitHeader, got)
	}
}
