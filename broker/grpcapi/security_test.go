package grpcapi

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store/storetest"
)

func TestAuditRecordsEveryCall(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	const query = "very private question about acquisitions"
	if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: query}); err != nil {
		t.Fatal(err)
	}
	h.search.Search(withToken(tok.Token), &pb.SearchRequest{Tool: "google_search", Query: "q"}) // denied: out of scope
	h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: query})                      // same query again

	resp, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var methods []string
	var records []*pb.AuditRecord
	started := 0
	for _, r := range resp.Records {
		if r.Code == "Started" { // state-changing admin calls are recorded before they run, too
			started++
			continue
		}
		records = append(records, r)
		methods = append(methods, strings.TrimPrefix(r.Method, "/credbroker.v1."))
		if strings.Contains(r.String(), query) || strings.Contains(r.String(), testKey) || strings.Contains(r.String(), tok.Token) {
			t.Fatalf("audit record holds a secret or the raw query: %v", r)
		}
	}
	want := []string{"AdminService/PutCredential", "AdminService/MintToken", "SearchService/Search", "SearchService/Search", "SearchService/Search"}
	if strings.Join(methods, ",") != strings.Join(want, ",") {
		t.Fatalf("audited methods %v, want %v", methods, want)
	}
	// MintToken commits its token together with its record, so it needs no "started" record.
	if started != 1 {
		t.Fatalf("%d started records, want 1 (PutCredential)", started)
	}
	put, mint, ok1, denied, again := records[0], records[1], records[2], records[3], records[4]
	if put.Credential != "scavio_api_key" || put.CredentialVersion != 1 || put.Event != "put" || !put.PeerKnown {
		t.Fatalf("put record: %v", put)
	}
	if mint.Code != "OK" || mint.TokenId != tok.Id || mint.Event != "mint" || !mint.PeerKnown || mint.Latency.AsDuration() <= 0 {
		t.Fatalf("mint record: %v", mint)
	}
	if ok1.Code != "OK" || ok1.TokenId != tok.Id || ok1.Tool != "web_search" || ok1.CredentialVersion != 1 ||
		ok1.QueryLen != uint32(len(query)) || ok1.QueryMac == "" || ok1.Latency.AsDuration() <= 0 {
		t.Fatalf("search record: %v", ok1)
	}
	if denied.Code != "PermissionDenied" || denied.TokenId != tok.Id {
		t.Fatalf("denied record: %v", denied)
	}
	// The caller is this test binary; with a pidfd (Linux 6.5+) the record names it.
	if self, _ := os.Executable(); ok1.Pidfd && ok1.Exe != self {
		t.Fatalf("search record names exe %q, want %q", ok1.Exe, self)
	} else if !ok1.Pidfd && (ok1.Exe != "" || ok1.Comm != "") {
		t.Fatalf("program named without a pidfd: %v", ok1)
	}
	if again.QueryMac != ok1.QueryMac {
		t.Fatal("equal queries have different digests")
	}
	v, err := h.admin.VerifyAudit(context.Background(), &pb.VerifyAuditRequest{})
	if err != nil || !v.Ok || v.Checked < 5 {
		t.Fatalf("verify: %v %v", v, err)
	}
}

// If the audit record cannot be written the call fails, whatever it was.
func TestAuditFailClosed(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	h.store.InjectAuditFailure(errors.New("injected: no space left on device"))
	_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	_, err = h.admin.MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour)})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	h.store.InjectAuditFailure(nil)
	if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestTokenRateLimitAndInspect(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, RateLimit: 2, RatePeriod: durationpb.New(time.Minute), MaxUses: 10, Label: "rl"})
	for range 2 {
		if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"}); err != nil {
			t.Fatal(err)
		}
	}
	before := h.fake.Count()
	_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "retry in")
	if h.fake.Count() != before {
		t.Fatal("a rate-limited call reached the upstream")
	}
	h.clock.Add(31 * time.Second) // one call refills every 30s
	if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatalf("after refill: %v", err)
	}

	got, err := h.admin.GetToken(context.Background(), &pb.GetTokenRequest{Id: tok.Id})
	if err != nil {
		t.Fatal(err)
	}
	ti := got.Token
	if ti.Uses != 3 || ti.UsesLeft != 7 || ti.LastUsedAt == nil || ti.RateLimit != 2 || ti.RatePeriod.AsDuration() != time.Minute || ti.Label != "rl" {
		t.Fatalf("inspect: %v", ti)
	}
	if strings.Contains(got.String(), tok.Token[len(tok.Token)-40:]) {
		t.Fatal("inspect shows the secret")
	}
	_, err = h.admin.GetToken(context.Background(), &pb.GetTokenRequest{Id: "0123456789abcdef"})
	requireGRPCStatus(t, err, codes.NotFound, "not found")

	// An unlimited token's last use is tracked in memory.
	free := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	h.search.Search(withToken(free.Token), &pb.SearchRequest{Query: "q"})
	if got, _ := h.admin.GetToken(context.Background(), &pb.GetTokenRequest{Id: free.Id}); got.Token.LastUsedAt == nil {
		t.Fatal("no last use for an unlimited token")
	}

	_, err = h.admin.MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), RateLimit: 5})
	requireGRPCStatus(t, err, codes.InvalidArgument, "rate period")
}

// An upstream that echoes the key back in its error body must not get it past the broker.
func TestKeyEchoRedacted(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	for _, status := range []int{400, 401, 403, 429, 500} {
		h.fake.SetFault(scaviotest.Fault{Status: status, EchoKey: true})
		_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"})
		if err == nil || strings.Contains(err.Error(), testKey) {
			t.Fatalf("status %d: %v", status, err)
		}
	}
	h.fake.SetFault(scaviotest.Fault{})
	if strings.Contains(h.logs.String(), testKey) {
		t.Fatal("a log line carries the key")
	}
}

// A call to a method brokerd does not have is answered Unimplemented and audited, with the
// (client-chosen) method name bounded; a probe is coalesced like any other refusal without a
// token: the first at once, the next in the interval's count record.
func TestUnknownMethodIsAudited(t *testing.T) {
	h := newHarness(t)
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	long := "/evil.Probe/" + strings.Repeat("A", 300)
	for _, m := range []string{"/credbroker.v1.AdminService/DumpKeys", long} {
		err := conn.Invoke(context.Background(), m, &pb.StatusRequest{}, &pb.StatusResponse{})
		requireGRPCStatus(t, err, codes.Unimplemented, "no such method")
	}
	if _, err := h.health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err) // a registered service that is not audited still works
	}
	if err := h.b.FlushRefusals(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range resp.Records {
		if r.Event == "unknown-method" {
			if r.Code != "Unimplemented" || !r.PeerKnown || r.Count != 1 {
				t.Fatalf("record: %v", r)
			}
			got = append(got, r.Method)
		}
	}
	want := []string{"/credbroker.v1.AdminService/DumpKeys", long[:maxMethodLen] + "…"}
	if !slices.Equal(got, want) {
		t.Fatalf("unknown-method records %q, want %q", got, want)
	}
}

// A token record edited in the database file under a running brokerd (here: its tool scope) is
// refused with DataLoss and a message telling the operator to restore from a backup, and the
// refusal is logged loudly. The token is never used.
func TestTamperedTokenIsDataLoss(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	if n := storetest.EditFile(t, h.store.Path(), []byte(`"tools":["web_search"]`), []byte(`"tools":["web_searcX"]`)); n == 0 {
		t.Fatal("token record not found in the file")
	}
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.DataLoss, "restore the database from a backup")
	if calls := h.fake.Count(); calls != 0 {
		t.Fatalf("upstream called %d times with a tampered token", calls)
	}
	if !strings.Contains(h.logs.String(), "DATABASE TAMPERING") {
		t.Fatalf("tampering not logged: %s", h.logs.String())
	}
	v, err := h.admin.VerifyAudit(context.Background(), &pb.VerifyAuditRequest{})
	if err != nil || v.Ok || !strings.Contains(v.Problem, "does not verify") {
		t.Fatalf("VerifyAudit: %v %v", v, err)
	}
}
