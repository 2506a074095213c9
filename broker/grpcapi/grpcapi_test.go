package grpcapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

const testKey = "sk_test_7c1d0b2e9f4a4e7b8a35"

// clock is a settable clock for expiry tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type harness struct {
	b      *broker.Broker
	fake   *scaviotest.Server
	store  *store.Store
	clock  *clock
	search pb.SearchServiceClient
	admin  pb.AdminServiceClient
	health healthpb.HealthClient
	logs   *strings.Builder
	// healthServer is the server's side of health (Shutdown starts a graceful stop's signals).
	healthServer *Health
	sock         string
}

// newHarness runs the real server on a real Unix socket in a temp dir, with a real store and the
// fake upstream.
func newHarness(t *testing.T) *harness {
	t.Helper()
	// The result cache is off here: these tests count upstream calls. economics_test.go turns it on.
	return newHarnessWith(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1 })
}

func newHarnessWith(t *testing.T, configure func(*broker.Config)) *harness {
	t.Helper()
	return newHarnessOpts(t, configure, nil)
}

// newHarnessOpts is newHarnessWith that also adjusts the server's options.
func newHarnessOpts(t *testing.T, configure func(*broker.Config), serverOpts func(*Options)) *harness {
	t.Helper()
	return newHarnessUpstream(t, nil, configure, serverOpts)
}

// newHarnessUpstream is newHarnessOpts that also adjusts the upstream client's config (BaseURL is
// the fake's).
func newHarnessUpstream(t *testing.T, upCfg func(*upstream.Config), configure func(*broker.Config), serverOpts func(*Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	st := storetest.Open(t, dir, store.Options{})
	fake := scaviotest.NewServer(testKey)
	uc := upstream.Config{BaseURL: fake.URL, BackoffBase: time.Millisecond, MaxRetryAfter: 50 * time.Millisecond}
	if upCfg != nil {
		upCfg(&uc)
	}
	up, err := upstream.New(uc)
	if err != nil {
		t.Fatal(err)
	}
	logs := &strings.Builder{}
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	clk := &clock{now: time.Now()}
	cfg := broker.Config{Store: st, Upstream: up, Logger: log, MaxTTL: 24 * time.Hour, Version: "test", Now: clk.Now}
	configure(&cfg)
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Admins: Admins{UIDs: []uint32{uint32(os.Geteuid())}}, Logger: log}
	if serverOpts != nil {
		serverOpts(&opts)
	}
	srv, hs := NewServer(b, opts)
	sock := filepath.Join(dir, "broker.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		// Searches whose callers left settle before the store closes.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.Drain(ctx); err != nil {
			t.Errorf("drain: %v", err)
		}
		st.Close()
		fake.Close()
	})
	return &harness{
		b: b, fake: fake, store: st, clock: clk, logs: logs, sock: sock, healthServer: hs,
		search: pb.NewSearchServiceClient(conn), admin: pb.NewAdminServiceClient(conn), health: healthpb.NewHealthClient(conn),
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

var _ io.Writer = writerFunc(nil)

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

func requireGRPCStatus(t *testing.T, err error, want codes.Code, wantMsg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v is not a gRPC status", err)
	}
	if st.Code() != want {
		t.Fatalf("code %s (%q), want %s", st.Code(), st.Message(), want)
	}
	if !strings.Contains(st.Message(), wantMsg) {
		t.Fatalf("message %q does not contain %q", st.Message(), wantMsg)
	}
	if strings.Contains(st.Message(), testKey) {
		t.Fatalf("message contains the key: %q", st.Message())
	}
}

func (h *harness) putKey(t *testing.T) {
	t.Helper()
	if _, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: broker.DefaultCredential, Value: []byte(testKey)}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) mint(t *testing.T, req *pb.MintTokenRequest) *pb.MintTokenResponse {
	t.Helper()
	if req.Ttl == nil {
		req.Ttl = durationpb.New(time.Hour)
	}
	resp, err := h.admin.MintToken(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestSearchFlow(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search", "google_search"}, Label: "flow"})
	if !strings.HasPrefix(tok.Token, "cbt_"+tok.Id+"_") {
		t.Fatalf("token %q does not carry id %q", tok.Token[:24], tok.Id)
	}

	resp, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "MCP server security best practices 2026"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 5 || resp.Tool != "web_search" || resp.CredentialVersion != 1 || resp.Credential != "scavio_api_key" {
		t.Fatalf("web_search: %d results, %+v", len(resp.Results), resp)
	}
	r0 := resp.Results[0]
	if r0.Title == "" || r0.Url == "" || r0.Position != 1 || r0.Raw.Fields["title"].GetStringValue() != r0.Title {
		t.Fatalf("result 0 incomplete: %v", r0)
	}
	reqs := h.fake.Requests()
	if last := reqs[len(reqs)-1]; last.Path != "/api/v1/search" || last.Auth != "x-api-key" || !last.KeyOK || last.Body["num_results"] != float64(5) {
		t.Fatalf("upstream saw %+v", last)
	}

	g, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{
		Tool: "google_search", Query: "golang",
		Google: &pb.GoogleSearchOptions{SearchType: "news", CountryCode: "us", Language: "en", Page: 2, Device: "desktop", LightRequest: proto.Bool(false)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Results) == 0 || g.Tool != "google_search" {
		t.Fatalf("google_search: %+v", g)
	}
	reqs = h.fake.Requests()
	last := reqs[len(reqs)-1]
	if last.Path != "/api/v1/google" || last.Auth != "bearer" || last.Body["search_type"] != "news" || last.Body["page"] != float64(2) || last.Body["light_request"] != false {
		t.Fatalf("upstream saw %+v", last)
	}

	who, err := h.search.WhoAmI(withToken(tok.Token), &pb.WhoAmIRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if who.TokenId != tok.Id || len(who.Tools) != 2 || who.Label != "flow" || !who.ExpiresAt.AsTime().Equal(tok.ExpiresAt.AsTime()) {
		t.Fatalf("whoami: %+v", who)
	}

	// Rotation takes effect for the next call.
	h.fake.AddKey("sk_test_second")
	if _, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: "scavio_api_key", Value: []byte("sk_test_second")}); err != nil {
		t.Fatal(err)
	}
	h.fake.RevokeKey(testKey)
	resp, err = h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "after rotation"})
	if err != nil || resp.CredentialVersion != 2 {
		t.Fatalf("after rotation: %v %v", resp, err)
	}

	if hr, err := h.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "credbroker.v1.SearchService"}); err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hr, err)
	}
	if strings.Contains(h.logs.String(), testKey) || strings.Contains(h.logs.String(), tok.Token) {
		t.Fatal("logs contain the key or the token")
	}
}

func TestSearchErrors(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	web := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	revoked := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	if _, err := h.admin.RevokeToken(context.Background(), &pb.RevokeTokenRequest{Id: revoked.Id}); err != nil {
		t.Fatal(err)
	}
	otherUID := uint32(os.Getuid() + 4242)
	bound := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BindUid: &otherUID}).Token
	selfUID := uint32(os.Getuid())
	boundSelf := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BindUid: &selfUID}).Token
	tampered := []byte(web)
	tampered[30] ^= 1 // still hex, checksum now wrong

	cases := []struct {
		name    string
		ctx     context.Context
		req     *pb.SearchRequest
		fault   *scaviotest.Fault
		code    codes.Code
		msg     string
		wantHit bool // whether the upstream should have been called
	}{
		{"no token", context.Background(), &pb.SearchRequest{Query: "q"}, nil, codes.Unauthenticated, "no token", false},
		{"malformed token", withToken("cbt_nope"), &pb.SearchRequest{Query: "q"}, nil, codes.Unauthenticated, "invalid token", false},
		{"tampered token", withToken(string(tampered)), &pb.SearchRequest{Query: "q"}, nil, codes.Unauthenticated, "invalid token", false},
		{"revoked token", withToken(revoked.Token), &pb.SearchRequest{Query: "q"}, nil, codes.Unauthenticated, "revoked", false},
		{"bound to other uid", withToken(bound), &pb.SearchRequest{Query: "q"}, nil, codes.Unauthenticated, "bound to another uid", false},
		{"bound to own uid", withToken(boundSelf), &pb.SearchRequest{Query: "q"}, nil, codes.OK, "", true},
		{"tool out of scope", withToken(web), &pb.SearchRequest{Tool: "google_search", Query: "q"}, nil, codes.PermissionDenied, "may not call google_search", false},
		{"unknown tool", withToken(web), &pb.SearchRequest{Tool: "rm_rf", Query: "q"}, nil, codes.InvalidArgument, "unknown tool", false},
		{"empty query", withToken(web), &pb.SearchRequest{Query: "  "}, nil, codes.InvalidArgument, "query must not be empty", false},
		{"long query", withToken(web), &pb.SearchRequest{Query: strings.Repeat("é", 501)}, nil, codes.InvalidArgument, "limit is 500", false},
		{"num_results too big", withToken(web), &pb.SearchRequest{Query: "q", NumResults: 101}, nil, codes.InvalidArgument, "num_results", false},
		{"google options on web_search", withToken(web), &pb.SearchRequest{Query: "q", Google: &pb.GoogleSearchOptions{Page: 2}}, nil, codes.InvalidArgument, "not accepted", false},
		{"upstream 401", withToken(web), &pb.SearchRequest{Query: "q"}, &scaviotest.Fault{Status: 401, EchoKey: true}, codes.FailedPrecondition, "upstream rejected the credential", true},
		{"upstream 403", withToken(web), &pb.SearchRequest{Query: "q"}, &scaviotest.Fault{Status: 403, EchoKey: true}, codes.FailedPrecondition, "upstream rejected the credential", true},
		{"upstream 402", withToken(web), &pb.SearchRequest{Query: "q"}, &scaviotest.Fault{Status: 402}, codes.ResourceExhausted, "credits", true},
		{"upstream 500", withToken(web), &pb.SearchRequest{Query: "q"}, &scaviotest.Fault{Status: 500, EchoKey: true}, codes.Unavailable, "unavailable", true},
		// Last: a 429 pauses every caller of the key for its Retry-After (the half-open gate).
		{"upstream 429", withToken(web), &pb.SearchRequest{Query: "q"}, &scaviotest.Fault{Status: 429, RetryAfter: "1"}, codes.ResourceExhausted, "rate limit", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fault != nil {
				h.fake.SetFault(*tc.fault)
				defer h.fake.SetFault(scaviotest.Fault{})
			}
			before := h.fake.Count()
			_, err := h.search.Search(tc.ctx, tc.req)
			if tc.code == codes.OK {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				requireGRPCStatus(t, err, tc.code, tc.msg)
			}
			if hit := h.fake.Count() > before; hit != tc.wantHit {
				t.Fatalf("upstream called: %v, want %v", hit, tc.wantHit)
			}
		})
	}
	if strings.Contains(h.logs.String(), testKey) {
		t.Fatal("logs contain the key")
	}
}

func TestExpiryAndUseLimit(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Minute)}).Token
	if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(time.Minute)
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.Unauthenticated, "expired")

	limited := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 2}).Token
	for range 2 {
		if _, err := h.search.Search(withToken(limited), &pb.SearchRequest{Query: "q"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = h.search.Search(withToken(limited), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.Unauthenticated, "used all 2")
	who, err := h.search.WhoAmI(withToken(limited), &pb.WhoAmIRequest{})
	if err != nil || who.Uses != 2 || who.MaxUses != 2 {
		t.Fatalf("whoami: %+v %v", who, err)
	}
	// A bad request does not spend a use.
	limited2 := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 1}).Token
	h.search.Search(withToken(limited2), &pb.SearchRequest{Query: ""})
	if _, err := h.search.Search(withToken(limited2), &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatalf("use spent by an invalid request: %v", err)
	}
}

func TestCredentialMissing(t *testing.T) {
	h := newHarness(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	_, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.FailedPrecondition, "brokerctl credential put scavio_api_key")
}

func TestAdminValidation(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.putKey(t)
	long := strings.Repeat("x", 129)
	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"bad name", func() error {
			_, err := h.admin.PutCredential(ctx, &pb.PutCredentialRequest{Name: "Bad Name", Value: []byte("v")})
			return err
		}, codes.InvalidArgument, "[a-z0-9_.-]{1,64}"},
		{"empty value", func() error {
			_, err := h.admin.PutCredential(ctx, &pb.PutCredentialRequest{Name: "x", Value: nil})
			return err
		}, codes.InvalidArgument, "must not be empty"},
		{"value too big", func() error {
			_, err := h.admin.PutCredential(ctx, &pb.PutCredentialRequest{Name: "x", Value: make([]byte, 8<<10+1)})
			return err
		}, codes.InvalidArgument, "limit is 8192"},
		{"message too big", func() error {
			_, err := h.admin.PutCredential(ctx, &pb.PutCredentialRequest{Name: "x", Value: make([]byte, 100<<10)})
			return err
		}, codes.ResourceExhausted, "larger than max"},
		{"put existing", func() error {
			_, err := h.admin.PutCredential(ctx, &pb.PutCredentialRequest{Name: "scavio_api_key", Value: []byte("v")})
			return err
		}, codes.AlreadyExists, "already exists"},
		{"rotate missing", func() error {
			_, err := h.admin.RotateCredential(ctx, &pb.RotateCredentialRequest{Name: "nope", Value: []byte("v")})
			return err
		}, codes.NotFound, "not found"},
		{"delete missing", func() error {
			_, err := h.admin.DeleteCredential(ctx, &pb.DeleteCredentialRequest{Name: "nope"})
			return err
		}, codes.NotFound, "not found"},
		{"mint no tools", func() error {
			_, err := h.admin.MintToken(ctx, &pb.MintTokenRequest{Ttl: durationpb.New(time.Hour)})
			return err
		}, codes.InvalidArgument, "at least one tool"},
		{"mint unknown tool", func() error {
			_, err := h.admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{"shell"}, Ttl: durationpb.New(time.Hour)})
			return err
		}, codes.InvalidArgument, "unknown tool"},
		{"mint zero ttl", func() error {
			_, err := h.admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{"web_search"}})
			return err
		}, codes.InvalidArgument, "ttl must be greater than zero"},
		{"mint ttl over max", func() error {
			_, err := h.admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(25 * time.Hour)})
			return err
		}, codes.InvalidArgument, "exceeds the maximum"},
		{"mint long label", func() error {
			_, err := h.admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), Label: long})
			return err
		}, codes.InvalidArgument, "label"},
		{"revoke unknown", func() error {
			_, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: "0123456789abcdef"})
			return err
		}, codes.NotFound, "not found"},
		{"revoke bad id", func() error {
			_, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: "../x"})
			return err
		}, codes.InvalidArgument, "token id"},
		{"list bad page size", func() error {
			_, err := h.admin.ListTokens(ctx, &pb.ListTokensRequest{PageSize: 5000})
			return err
		}, codes.InvalidArgument, "page_size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { requireGRPCStatus(t, tc.call(), tc.code, tc.msg) })
	}
}

func TestListTokensPagedAndStatus(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	ids := map[string]bool{}
	for range 7 {
		ids[h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Id] = true
	}
	seen := map[string]bool{}
	page := ""
	for {
		resp, err := h.admin.ListTokens(context.Background(), &pb.ListTokensRequest{PageSize: 3, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Tokens) > 3 {
			t.Fatalf("page of %d", len(resp.Tokens))
		}
		for _, tk := range resp.Tokens {
			seen[tk.Id] = true
		}
		if page = resp.NextPageToken; page == "" {
			break
		}
	}
	if len(seen) != 7 {
		t.Fatalf("listed %d of 7", len(seen))
	}
	st, err := h.admin.Status(context.Background(), &pb.StatusRequest{})
	if err != nil || st.Credentials != 1 || st.LiveTokens != 7 || st.Version != "test" || st.SchemaVersion != store.SchemaVersion {
		t.Fatalf("status: %+v %v", st, err)
	}
}

// Admin calls from a uid that is not an admin are refused with a message that says how to grant
// access. (The process-level test with a real second uid lives in the integration tests.)
func TestAdminAuthorization(t *testing.T) {
	a := Admins{UIDs: []uint32{1000}, GIDs: []uint32{50}}
	ctxFor := func(uid, gid uint32) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{UID: uid, GID: gid}})
	}
	ctxForGroups := func(uid, gid uint32, groups ...uint32) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{UID: uid, GID: gid, Groups: groups}})
	}
	cases := []struct {
		name    string
		ctx     context.Context
		method  string
		wantErr bool
	}{
		{"root", ctxFor(0, 0), "/credbroker.v1.AdminService/MintToken", false},
		{"listed uid", ctxFor(1000, 1000), "/credbroker.v1.AdminService/MintToken", false},
		{"listed gid", ctxFor(2000, 50), "/credbroker.v1.AdminService/MintToken", false},
		{"listed gid as a supplementary group", ctxForGroups(2000, 2000, 7, 50), "/credbroker.v1.AdminService/MintToken", false},
		{"other supplementary groups", ctxForGroups(2000, 2000, 7, 51), "/credbroker.v1.AdminService/MintToken", true},
		{"other uid", ctxFor(65534, 65534), "/credbroker.v1.AdminService/MintToken", true},
		{"unknown peer", context.Background(), "/credbroker.v1.AdminService/Status", true},
		{"other uid on data plane", ctxFor(65534, 65534), "/credbroker.v1.SearchService/Search", false},
		{"other uid watching the audit log", ctxFor(65534, 65534), "/credbroker.v1.AdminService/WatchAudit", true},
		{"other uid re-wrapping the master key", ctxFor(65534, 65534), "/credbroker.v1.AdminService/RewrapMasterKey", true},
		{"other uid migrating the master key", ctxFor(65534, 65534), "/credbroker.v1.AdminService/MigrateMasterKey", true},
		{"listed uid migrating the master key", ctxFor(1000, 1000), "/credbroker.v1.AdminService/MigrateMasterKey", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := a.authorize(tc.ctx, tc.method)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, wantErr %v", err, tc.wantErr)
			}
			if tc.name == "other uid" {
				requireGRPCStatus(t, err, codes.PermissionDenied, "uid 65534")
				requireGRPCStatus(t, err, codes.PermissionDenied, "--admin-uid 65534")
			}
		})
	}
}

func TestUnknownErrorsAreGeneric(t *testing.T) {
	err := toStatus(slog.New(slog.NewTextHandler(io.Discard, nil)), "X", errors.New("disk on fire: /secret/path"))
	requireGRPCStatus(t, err, codes.Internal, "internal error")
	if strings.Contains(err.Error(), "/secret/path") {
		t.Fatal("internal detail leaked")
	}
}
