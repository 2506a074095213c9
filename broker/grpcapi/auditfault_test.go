package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// When the audit log cannot be written (disk full), a call that is refused must not have happened:
// no token minted, no credential stored, no upstream call spent. Today the auditor runs the
// handler first and writes the record after, so the mutation commits (or the upstream is called)
// and only the answer is withheld.
func TestAuditFailureRefusesBeforeExecuting(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	upstreamBefore := h.fake.Count()

	h.store.InjectAuditFailure(errors.New("injected: no space left on device"))
	_, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: "ghost", Value: []byte("v")})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	_, err = h.admin.MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), Label: "ghost"})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	_, err = h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	h.store.InjectAuditFailure(nil)

	if _, _, err := h.store.LoadCredential("ghost"); err == nil {
		t.Error("PutCredential was answered Unavailable (not audited) but the credential is stored")
	}
	list, err := h.admin.ListTokens(context.Background(), &pb.ListTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range list.Tokens {
		if ti.Label == "ghost" {
			t.Errorf("MintToken was answered Unavailable (not audited) but token %s exists", ti.Id)
		}
	}
	if n := h.fake.Count(); n != upstreamBefore {
		t.Errorf("a search answered Unavailable (not audited) still made %d upstream call(s)", n-upstreamBefore)
	}
}

// With the audit log unwritable every audited call fails closed with the same message, while the
// health service (not audited) keeps answering SERVING — so a health probe does not notice. Status
// is the exception (TestStatusAnswersWhileAuditFails).
func TestAuditFailureScope(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	h.store.InjectAuditFailure(errors.New("injected: no space left on device"))
	defer h.store.InjectAuditFailure(nil)
	const msg = "brokerd cannot write its audit log, so the call was refused"
	ctx, bg := withToken(tok.Token), context.Background()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Search", func() error { _, err := h.search.Search(ctx, &pb.SearchRequest{Query: "q"}); return err }},
		{"WhoAmI", func() error { _, err := h.search.WhoAmI(ctx, &pb.WhoAmIRequest{}); return err }},
		{"ListCredentials", func() error { _, err := h.admin.ListCredentials(bg, &pb.ListCredentialsRequest{}); return err }},
		{"ListTokens", func() error { _, err := h.admin.ListTokens(bg, &pb.ListTokensRequest{}); return err }},
		{"VerifyAudit", func() error { _, err := h.admin.VerifyAudit(bg, &pb.VerifyAuditRequest{}); return err }},
	} {
		t.Run(c.name, func(t *testing.T) { requireGRPCStatus(t, c.call(), codes.Unavailable, msg) })
	}
	resp, err := h.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}

// Issue 16 item 4: Status is read-only and is how the operator learns the audit log is failing,
// so it answers while the disk is full and says so; and once the disk recovers, the first call
// goes ahead (the gate probes with a commit instead of refusing on the last failure).
func TestStatusAnswersWhileAuditFails(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	ctx, bg := withToken(tok.Token), context.Background()

	h.store.InjectAuditFailure(fmt.Errorf("injected: %w", syscall.ENOSPC))
	_, err := h.search.Search(ctx, &pb.SearchRequest{Query: "q"})
	requireGRPCStatus(t, err, codes.Unavailable, "audit log")
	st, err := h.admin.Status(bg, &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("Status while the audit log fails: %v", err)
	}
	if w := strings.Join(st.Warnings, "\n"); !strings.Contains(w, "the audit log cannot be written (the disk is full)") || strings.Contains(w, "injected") {
		t.Errorf("Status warnings while the disk is full: %q", st.Warnings)
	}

	// Space returns: the log is still marked failing (no commit has succeeded since), and the
	// first call must not be refused for it.
	h.store.InjectAuditFailure(nil)
	if _, err := h.search.Search(ctx, &pb.SearchRequest{Query: "q"}); err != nil {
		t.Fatalf("first search after the audit log recovered: %v", err)
	}
	st, err = h.admin.Status(bg, &pb.StatusRequest{})
	if err != nil || strings.Contains(strings.Join(st.Warnings, "\n"), "audit log") {
		t.Fatalf("Status after recovery: %v %q", err, st.GetWarnings())
	}
	if v, err := h.admin.VerifyAudit(bg, &pb.VerifyAuditRequest{}); err != nil || !v.Ok {
		t.Fatalf("verify after recovery: %v %v", v, err)
	}
}
