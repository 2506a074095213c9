package grpcapi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// details returns the ErrorInfo and RetryInfo (nil if absent) of a gRPC error.
func details(t *testing.T, err error) (*errdetails.ErrorInfo, *errdetails.RetryInfo) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("error %v is not a gRPC status", err)
	}
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if info == nil {
		t.Fatalf("%s %q carries no ErrorInfo", st.Code(), st.Message())
	}
	if info.Domain != broker.ErrorDomain {
		t.Fatalf("ErrorInfo domain %q", info.Domain)
	}
	return info, retry
}

var reasonRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]*[A-Z0-9]$`)

// Every sentinel in the table yields its code and a well-formed reason, through Classify and
// through toStatus (as ErrorInfo), wrapped as domain code wraps it.
func TestEveryErrorCodeHasReason(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	seen := map[string]bool{}
	for _, m := range errorCodes {
		if !reasonRE.MatchString(m.reason) {
			t.Errorf("%v: reason %q is not UPPER_SNAKE", m.err, m.reason)
		}
		seen[m.reason] = true
		err := fmt.Errorf("context: %w", m.err)
		code, reason, _, known := Classify(err)
		if !known || code != m.code || reason != m.reason {
			t.Errorf("%v: Classify = %s %s %v, want %s %s", m.err, code, reason, known, m.code, m.reason)
		}
		info, _ := details(t, toStatus(log, "Test", err))
		if info.Reason != m.reason || status.Code(toStatus(log, "Test", err)) != m.code {
			t.Errorf("%v: status reason %q, want %q", m.err, info.Reason, m.reason)
		}
	}
	// What is not in the table still has a reason.
	for _, c := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{fmt.Errorf("x: %w", io.ErrUnexpectedEOF), codes.Internal, broker.ReasonInternal},
		{fmt.Errorf("write: %w", os.NewSyscallError("write", syscall.ENOSPC)), codes.Unavailable, broker.ReasonDatabaseUnavailable},
	} {
		err := toStatus(log, "Test", c.err)
		if info, _ := details(t, err); info.Reason != c.reason || status.Code(err) != c.code {
			t.Errorf("%v: %s %s, want %s %s", c.err, status.Code(err), info.Reason, c.code, c.reason)
		}
	}
	// The refusals built outside toStatus.
	for _, c := range []struct {
		name   string
		err    error
		reason string
	}{
		{"drain", shuttingDown, broker.ReasonShuttingDown},
		{"audit", errAuditRefused(), broker.ReasonAuditUnavailable},
		{"admin without peer", Admins{}.authorize(context.Background(), adminPrefix+"Status"), broker.ReasonNotAdmin},
	} {
		if info, _ := details(t, c.err); info.Reason != c.reason {
			t.Errorf("%s: reason %q, want %q", c.name, info.Reason, c.reason)
		}
	}
}

// Real refusals through the real server carry the reason a program can act on, what the call
// used (never a secret) and, where waiting helps, how long.
func TestRefusalsCarryErrorInfo(t *testing.T) {
	other := uint32(os.Geteuid()) + 1
	web := &pb.SearchRequest{Query: "q"}
	for _, c := range []struct {
		name string
		// setup prepares h and returns the token and request to send.
		setup  func(t *testing.T, h *harness) (string, *pb.SearchRequest)
		code   codes.Code
		reason string
		md     map[string]string // metadata that must be present ("*": any non-empty value)
		retry  func(h *harness) time.Duration
	}{
		{name: "no token", code: codes.Unauthenticated, reason: broker.ReasonTokenMissing,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) { return "", web }},
		{name: "garbage token", code: codes.Unauthenticated, reason: broker.ReasonTokenInvalid,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) { return "cbt_nope", web }},
		{name: "revoked", code: codes.Unauthenticated, reason: broker.ReasonTokenRevoked, md: map[string]string{"token_id": "*"},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
				if _, err := h.admin.RevokeToken(context.Background(), &pb.RevokeTokenRequest{Id: tok.Id}); err != nil {
					t.Fatal(err)
				}
				return tok.Token, web
			}},
		{name: "expired", code: codes.Unauthenticated, reason: broker.ReasonTokenExpired, md: map[string]string{"token_id": "*"},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
				h.clock.Add(2 * time.Hour)
				return tok.Token, web
			}},
		{name: "uses spent", code: codes.Unauthenticated, reason: broker.ReasonTokenExhausted,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, MaxUses: 1})
				if _, err := h.search.Search(withToken(tok.Token), web); err != nil {
					t.Fatal(err)
				}
				return tok.Token, web
			}},
		{name: "bound to another uid", code: codes.Unauthenticated, reason: broker.ReasonTokenBoundToOtherUID,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BindUid: &other}).Token, web
			}},
		{name: "tool not in scope", code: codes.PermissionDenied, reason: broker.ReasonToolNotInScope,
			md: map[string]string{"tool": "google_search", "token_id": "*"},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, &pb.SearchRequest{Tool: "google_search", Query: "q"}
			}},
		{name: "invalid argument", code: codes.InvalidArgument, reason: broker.ReasonInvalidArgument,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, &pb.SearchRequest{Query: ""}
			}},
		{name: "credential missing", code: codes.FailedPrecondition, reason: broker.ReasonCredentialMissing,
			md: map[string]string{"credential": broker.DefaultCredential},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, web
			}},
		{name: "token rate limit", code: codes.ResourceExhausted, reason: broker.ReasonRateLimited,
			retry: func(*harness) time.Duration { return time.Minute },
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, RateLimit: 1, RatePeriod: durationpb.New(time.Minute)})
				if _, err := h.search.Search(withToken(tok.Token), web); err != nil {
					t.Fatal(err)
				}
				return tok.Token, web
			}},
		{name: "token budget", code: codes.ResourceExhausted, reason: broker.ReasonBudgetExhausted,
			retry: func(h *harness) time.Duration { return nextMidnight(h.clock.Now()).Sub(h.clock.Now()) },
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BudgetCredits: 1, BudgetPeriod: "day"})
				if _, err := h.search.Search(withToken(tok.Token), web); err != nil {
					t.Fatal(err)
				}
				return tok.Token, web
			}},
		{name: "credential ceiling", code: codes.ResourceExhausted, reason: broker.ReasonCredentialCeiling,
			md: map[string]string{"credential": broker.DefaultCredential},
			retry: func(h *harness) time.Duration {
				y, m, _ := h.clock.Now().UTC().Date()
				return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC).Sub(h.clock.Now())
			},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				if _, err := h.admin.SetCredentialLimits(context.Background(), &pb.SetCredentialLimitsRequest{Name: broker.DefaultCredential, Limits: &pb.CredentialLimits{MonthlyCredits: 1}}); err != nil {
					t.Fatal(err)
				}
				tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
				if _, err := h.search.Search(withToken(tok.Token), web); err != nil {
					t.Fatal(err)
				}
				return tok.Token, web
			}},
		{name: "upstream rejects the key", code: codes.FailedPrecondition, reason: broker.ReasonUpstreamRejectedKey,
			md: map[string]string{"credential": broker.DefaultCredential, "tool": "web_search"},
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 401})
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, web
			}},
		{name: "upstream out of credits", code: codes.ResourceExhausted, reason: broker.ReasonUpstreamOutOfCredits,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 402})
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, web
			}},
		{name: "upstream rate limit", code: codes.ResourceExhausted, reason: broker.ReasonUpstreamRateLimited,
			retry: func(*harness) time.Duration { return 30 * time.Second },
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				// Longer than the client's MaxRetryAfter, so brokerd answers at once.
				h.fake.SetFault(scaviotest.Fault{Status: 429, RetryAfter: "30"})
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, web
			}},
		{name: "upstream unavailable", code: codes.Unavailable, reason: broker.ReasonUpstreamUnavailable,
			setup: func(t *testing.T, h *harness) (string, *pb.SearchRequest) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 503})
				return h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token, web
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			tok, req := c.setup(t, h)
			ctx := context.Background()
			if tok != "" {
				ctx = withToken(tok)
			}
			_, err := h.search.Search(ctx, req)
			if status.Code(err) != c.code {
				t.Fatalf("code %s (%v), want %s", status.Code(err), err, c.code)
			}
			info, retry := details(t, err)
			if info.Reason != c.reason {
				t.Fatalf("reason %q, want %q (%v)", info.Reason, c.reason, err)
			}
			for k, want := range c.md {
				if got := info.Metadata[k]; got == "" || (want != "*" && got != want) {
					t.Errorf("metadata %s = %q, want %q (all: %v)", k, got, want, info.Metadata)
				}
			}
			for k, v := range info.Metadata {
				if v == testKey || k == "key" {
					t.Fatalf("metadata carries the key: %v", info.Metadata)
				}
			}
			switch {
			case c.retry == nil && retry != nil:
				t.Fatalf("RetryInfo %v where waiting is not known to help", retry.RetryDelay.AsDuration())
			case c.retry != nil && retry == nil:
				t.Fatal("no RetryInfo")
			case c.retry != nil && retry.RetryDelay.AsDuration() != c.retry(h):
				t.Fatalf("retry delay %s, want %s", retry.RetryDelay.AsDuration(), c.retry(h))
			}
		})
	}
}

func nextMidnight(now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// A call to a method brokerd does not have is refused with a reason too.
func TestUnknownMethodErrorInfo(t *testing.T) {
	h := newHarness(t)
	conn, err := grpc.NewClient("unix://"+h.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Invoke(context.Background(), "/credbroker.v1.SearchService/Nope", &pb.WhoAmIRequest{}, &pb.WhoAmIResponse{})
	if info, _ := details(t, err); info.Reason != broker.ReasonUnknownMethod || status.Code(err) != codes.Unimplemented {
		t.Fatalf("%v: reason %q", err, info.Reason)
	}
}
