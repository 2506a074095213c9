package grpcapi

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// newRotHarness is newHarness with a hook to change the broker's configuration (grace window,
// clock) before it is built.
func newRotHarness(t *testing.T, mod func(*broker.Config)) *harness {
	t.Helper()
	return newHarnessWith(t, func(c *broker.Config) {
		c.Economics.DefaultCacheTTL = -1
		if mod != nil {
			mod(c)
		}
	})
}

// The zero-downtime test: several clients search in loops over the real gRPC stack while
// the key is rotated many times, and the fake provider revokes each old key one second after its
// rotation. Not one call may fail. The grace fallback is off, so it cannot hide a failure.
func TestZeroDowntimeRotation(t *testing.T) {
	h := newRotHarness(t, func(c *broker.Config) { c.GraceWindow = -1; c.Now = time.Now })
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token

	const (
		clients   = 4
		rotations = 12
		every     = 250 * time.Millisecond
	)
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		calls    atomic.Int64
		failures atomic.Int64
		firstErr atomic.Value
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				ctx, cancel := context.WithTimeout(withToken(tok), 5*time.Second)
				_, err := h.search.Search(ctx, &pb.SearchRequest{Query: "zero downtime", NumResults: 1})
				cancel()
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	var revokes sync.WaitGroup
	old := testKey
	for i := 2; i <= rotations+1; i++ {
		time.Sleep(every)
		next := fmt.Sprintf("sk_test_ROTATION_%02d", i)
		h.fake.AddKey(next) // the provider issues the new key first...
		c, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte(next)})
		if err != nil || c.Credential.Version != uint64(i) {
			t.Fatalf("rotation %d: %v %v", i, c, err)
		}
		revokes.Add(1)
		prev := old
		time.AfterFunc(time.Second, func() { // ...and revokes the old one a second later
			h.fake.RevokeKey(prev)
			revokes.Done()
		})
		old = next
	}
	revokes.Wait()
	time.Sleep(200 * time.Millisecond) // searches after the last revocation, too
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d calls failed during rotation; first: %v", n, calls.Load(), firstErr.Load())
	}
	reqs := h.fake.Requests()
	last := reqs[len(reqs)-1]
	if last.Key != old || !last.KeyOK {
		t.Fatalf("the last call did not use the newest key")
	}
	if calls.Load() < 4*rotations {
		t.Fatalf("only %d calls made; the test did not exercise rotation under load", calls.Load())
	}
	t.Logf("%d calls, %d rotations, 0 failures", calls.Load(), rotations)
}

func TestVerifiedRotation(t *testing.T) {
	tests := []struct {
		name        string
		key         string
		providerHas bool
		fault       scaviotest.Fault
		credential  string
		wantCode    codes.Code
		wantMsg     string
	}{
		{name: "accepted key is promoted", key: "sk_test_GOOD_2", providerHas: true},
		{name: "rejected key is not promoted", key: "sk_test_UNKNOWN_2", wantCode: codes.FailedPrecondition,
			wantMsg: "upstream rejected the new key; it was not promoted"},
		{name: "403 is a rejection too", key: "sk_test_FORBIDDEN_2", providerHas: true, fault: scaviotest.Fault{Status: 403},
			wantCode: codes.FailedPrecondition, wantMsg: "upstream rejected the new key; it was not promoted"},
		{name: "upstream down: not promoted", key: "sk_test_DOWN_2", providerHas: true, fault: scaviotest.Fault{Status: 500},
			wantCode: codes.Unavailable, wantMsg: "could not be verified, so it was not promoted"},
		{name: "credential no tool spends", key: "sk_test_x", credential: "other", wantCode: codes.InvalidArgument,
			wantMsg: "not spent by any tool"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRotHarness(t, nil)
			h.putKey(t)
			name := broker.DefaultCredential
			if tc.credential != "" {
				name = tc.credential
				if _, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: name, Value: []byte("v1")}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.providerHas {
				h.fake.AddKey(tc.key)
			}
			h.fake.SetFault(tc.fault)
			before := h.fake.Count()
			resp, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: name, Value: []byte(tc.key), Verify: true})
			h.fake.SetFault(scaviotest.Fault{})
			hist, herr := h.admin.CredentialHistory(context.Background(), &pb.CredentialHistoryRequest{Name: name})
			if herr != nil {
				t.Fatal(herr)
			}
			if tc.wantCode != codes.OK {
				requireGRPCStatus(t, err, tc.wantCode, tc.wantMsg)
				if strings.Contains(err.Error(), tc.key) {
					t.Fatal("the error names the key")
				}
				if hist.Credential.Version != 1 || hist.Credential.PendingVersion != 0 || len(hist.Versions) != 1 {
					t.Fatalf("a failed verified rotation changed the credential: %v", hist)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.Credential.Version != 2 || resp.Credential.PreviousVersion != 1 {
				t.Fatalf("promoted: %v", resp.Credential)
			}
			if n := h.fake.Count() - before; n != 1 {
				t.Fatalf("verification made %d upstream calls, want 1", n)
			}
			last := h.fake.Requests()[before]
			if last.Key != tc.key || last.Path != scaviotest.SearchPath || last.Body["num_results"] != float64(1) {
				t.Fatalf("verification call: %+v", last)
			}
			v2 := hist.Versions[1]
			if !v2.Verified || v2.State != "current" || v2.How != "manual" || v2.CreatedByUid == nil || *v2.CreatedByUid != uint32(os.Geteuid()) {
				t.Fatalf("history of v2: %v", v2)
			}
		})
	}
}

func TestGraceFallback(t *testing.T) {
	h := newRotHarness(t, nil)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	// The operator rotates to a key the provider does not know yet (a typo, or a key not active yet).
	if _, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte("sk_test_NOT_ACTIVE")}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		resp, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "grace"})
		if err != nil {
			t.Fatalf("search %d inside the grace window: %v", i, err)
		}
		if resp.CredentialVersion != 1 {
			t.Fatalf("served by v%d, want the previous v1", resp.CredentialVersion)
		}
	}
	st, err := h.admin.Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(st.Warnings, "\n"), "credential scavio_api_key: current key rejected, serving previous (v2 rejected") {
		t.Fatalf("status warnings: %q", st.Warnings)
	}
	audit, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	events := 0
	for _, r := range audit.Records {
		if r.Event == "fallback-previous-version" {
			events++
			if r.CredentialVersion != 1 || r.Credential != broker.DefaultCredential {
				t.Fatalf("fallback audit record: %v", r)
			}
		}
	}
	// One event record (not per call) plus each search's own record.
	if events != 4 {
		t.Fatalf("%d fallback audit records, want 1 event + 3 calls", events)
	}
	if !strings.Contains(h.logs.String(), "current key rejected, serving previous") {
		t.Fatal("the fallback was not logged")
	}
	hist, _ := h.admin.CredentialHistory(context.Background(), &pb.CredentialHistoryRequest{Name: broker.DefaultCredential})
	if last := hist.Events[len(hist.Events)-1]; last.Event != "fallback-previous-version" || last.Version != 1 || !strings.Contains(last.Detail, "v2 rejected by the upstream") {
		t.Fatalf("history events: %v", hist.Events)
	}

	// After the window the rejected key is an error again, and the warning is gone.
	h.clock.Add(broker.DefaultGraceWindow)
	_, err = h.search.Search(withToken(tok), &pb.SearchRequest{Query: "grace"})
	requireGRPCStatus(t, err, codes.FailedPrecondition, "upstream rejected the credential \"scavio_api_key\" v2")
	st, _ = h.admin.Status(context.Background(), &pb.StatusRequest{})
	if strings.Contains(strings.Join(st.Warnings, "\n"), "serving previous") {
		t.Fatalf("warning outlived the window: %q", st.Warnings)
	}

	// With the window disabled there is no fallback at all.
	h2 := newRotHarness(t, func(c *broker.Config) { c.GraceWindow = -1 })
	h2.putKey(t)
	tok2 := h2.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	h2.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte("sk_test_NOT_ACTIVE")})
	_, err = h2.search.Search(withToken(tok2), &pb.SearchRequest{Query: "grace"})
	requireGRPCStatus(t, err, codes.FailedPrecondition, "upstream rejected")
}

// A rotation stamped by a clock that was ahead (corrected since): the grace window is measured
// from the rotation's time, so a clock now a day behind it must not keep the fallback open for that
// day. A small step back stays within the window.
func TestGraceFallbackAfterClockStepsBack(t *testing.T) {
	tests := []struct {
		name     string
		back     time.Duration
		fallback bool
	}{
		{"one minute back", time.Minute, true},
		{"one day back", 24 * time.Hour, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRotHarness(t, nil)
			h.putKey(t)
			tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
			if _, err := h.admin.RotateCredential(context.Background(), &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte("sk_test_NOT_ACTIVE")}); err != nil {
				t.Fatal(err)
			}
			h.clock.Add(-tc.back)
			resp, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "clock"})
			if tc.fallback {
				if err != nil || resp.CredentialVersion != 1 {
					t.Fatalf("search: %v %v, want served by v1", resp, err)
				}
				return
			}
			requireGRPCStatus(t, err, codes.FailedPrecondition, "upstream rejected the credential \"scavio_api_key\" v2")
		})
	}
}

// After a rollback the previous version is the one the operator rolled away from (here a key
// of another account, still valid upstream). When the rolled-back-to key is later rejected inside
// the grace window, that key must not be sent: the call fails with the rejection instead.
func TestGraceFallbackNotAfterRollback(t *testing.T) {
	h := newRotHarness(t, nil)
	ctx := context.Background()
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
	const wrong = "sk_test_OTHER_ACCOUNT_KEY"
	h.fake.AddKey(wrong)
	if _, err := h.admin.RotateCredential(ctx, &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte(wrong)}); err != nil {
		t.Fatal(err)
	}
	rb, err := h.admin.RollbackCredential(ctx, &pb.RollbackCredentialRequest{Name: broker.DefaultCredential})
	if err != nil || rb.Credential.Version != 3 || rb.Credential.PreviousVersion != 2 {
		t.Fatalf("rollback: %v %v", rb, err)
	}
	h.fake.RevokeKey(testKey) // the rolled-back-to key stops working upstream
	before := len(h.fake.Requests())
	_, err = h.search.Search(withToken(tok), &pb.SearchRequest{Query: "after rollback"})
	requireGRPCStatus(t, err, codes.FailedPrecondition, "upstream rejected the credential \"scavio_api_key\" v3")
	for _, r := range h.fake.Requests()[before:] {
		if r.Key == wrong {
			t.Fatal("the key rolled away from was sent after the rollback")
		}
	}
	// A rotation after the rollback falls back as usual (to the rolled-back-to value).
	h.fake.AddKey(testKey)
	if _, err := h.admin.RotateCredential(ctx, &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: []byte("sk_test_NOT_ACTIVE")}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "after rotation"})
	if err != nil || resp.CredentialVersion != 3 {
		t.Fatalf("search after a rotation that followed the rollback: %v %v, want served by v3", resp, err)
	}
}

func TestHistoryRollbackPolicyImportRekey(t *testing.T) {
	h := newRotHarness(t, nil)
	ctx := context.Background()
	h.putKey(t)
	uid := uint32(os.Geteuid())
	for i := 2; i <= 3; i++ {
		if _, err := h.admin.RotateCredential(ctx, &pb.RotateCredentialRequest{Name: broker.DefaultCredential, Value: fmt.Appendf(nil, "sk_test_V%d", i)}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("history", func(t *testing.T) {
		hist, err := h.admin.CredentialHistory(ctx, &pb.CredentialHistoryRequest{Name: broker.DefaultCredential})
		if err != nil {
			t.Fatal(err)
		}
		if len(hist.Versions) != 3 || hist.Credential.Version != 3 || hist.Credential.PreviousVersion != 2 {
			t.Fatalf("history: %v", hist)
		}
		var events []string
		for _, e := range hist.Events {
			events = append(events, e.Event)
			if e.ByUid == nil || *e.ByUid != uid {
				t.Fatalf("event without the caller's uid: %v", e)
			}
		}
		if got := strings.Join(events, ","); got != "put,rotate,rotate" {
			t.Fatalf("events: %s", got)
		}
		for i, v := range hist.Versions {
			wantState := "previous"
			if i == 2 {
				wantState = "current"
			}
			if v.Version != uint64(i+1) || v.How != "manual" || v.State != wantState || v.CreatedByUid == nil || *v.CreatedByUid != uid || v.KeyId == 0 {
				t.Fatalf("version %d: %v", i+1, v)
			}
		}
	})

	t.Run("rollback errors", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			req      *pb.RollbackCredentialRequest
			wantCode codes.Code
			wantMsg  string
		}{
			{"current", &pb.RollbackCredentialRequest{Name: broker.DefaultCredential, ToVersion: 3}, codes.InvalidArgument, "already current"},
			{"not kept", &pb.RollbackCredentialRequest{Name: broker.DefaultCredential, ToVersion: 9}, codes.NotFound, "version 9 is not kept (kept: 1, 2, 3)"},
			{"unknown credential", &pb.RollbackCredentialRequest{Name: "nope"}, codes.NotFound, "not found"},
			{"bad name", &pb.RollbackCredentialRequest{Name: "NOPE"}, codes.InvalidArgument, "must match"},
		} {
			_, err := h.admin.RollbackCredential(ctx, tc.req)
			requireGRPCStatus(t, err, tc.wantCode, tc.wantMsg)
		}
	})

	t.Run("rollback serves the old value", func(t *testing.T) {
		tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
		// v3 is unknown to the provider; roll back to v1 (testKey).
		resp, err := h.admin.RollbackCredential(ctx, &pb.RollbackCredentialRequest{Name: broker.DefaultCredential, ToVersion: 1})
		if err != nil || resp.Credential.Version != 4 || resp.FromVersion != 1 {
			t.Fatalf("rollback: %v %v", resp, err)
		}
		s, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "after rollback"})
		if err != nil || s.CredentialVersion != 4 {
			t.Fatalf("search after rollback: %v %v", s, err)
		}
		if last := h.fake.Requests(); last[len(last)-1].Key != testKey {
			t.Fatal("the rollback version does not hold v1's value")
		}
		hist, _ := h.admin.CredentialHistory(ctx, &pb.CredentialHistoryRequest{Name: broker.DefaultCredential})
		v4 := hist.Versions[len(hist.Versions)-1]
		if v4.How != "rollback" || v4.FromVersion != 1 {
			t.Fatalf("rollback version: %v", v4)
		}
	})

	t.Run("policy", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			policy   *pb.RotationPolicy
			wantCode codes.Code
			wantMsg  string
		}{
			{"too short", &pb.RotationPolicy{MaxAge: durationpb.New(time.Second)}, codes.InvalidArgument, "shorter than the minimum"},
			{"command without max age", &pb.RotationPolicy{RotateCommand: []string{"/bin/true"}}, codes.InvalidArgument, "needs a max age"},
			{"relative command", &pb.RotationPolicy{MaxAge: durationpb.New(time.Hour), RotateCommand: []string{"new-key.sh"}}, codes.InvalidArgument, "clean absolute path"},
			{"missing command", &pb.RotationPolicy{MaxAge: durationpb.New(time.Hour), RotateCommand: []string{"/nonexistent/new-key"}}, codes.InvalidArgument, "no such file"},
			{"verify without command", &pb.RotationPolicy{MaxAge: durationpb.New(time.Hour), Verify: true}, codes.InvalidArgument, "needs a rotate command"},
		} {
			_, err := h.admin.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Name: broker.DefaultCredential, Policy: tc.policy})
			requireGRPCStatus(t, err, tc.wantCode, tc.wantMsg)
		}
		resp, err := h.admin.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Name: broker.DefaultCredential, Policy: &pb.RotationPolicy{MaxAge: durationpb.New(30 * 24 * time.Hour)}})
		if err != nil || resp.Credential.Overdue || resp.Credential.NextDue == nil {
			t.Fatalf("set policy: %v %v", resp, err)
		}
		h.clock.Add(31 * 24 * time.Hour)
		list, _ := h.admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
		if c := list.Credentials[0]; !c.Overdue || c.Policy.GetMaxAge().AsDuration() != 30*24*time.Hour {
			t.Fatalf("list after 31 days: %v", c)
		}
		st, _ := h.admin.Status(ctx, &pb.StatusRequest{})
		if len(st.Rotation) != 1 || !st.Rotation[0].Overdue || !strings.Contains(strings.Join(st.Warnings, "\n"), "due for rotation since") {
			t.Fatalf("status: %v %q", st.Rotation, st.Warnings)
		}
		resp, err = h.admin.SetRotationPolicy(ctx, &pb.SetRotationPolicyRequest{Name: broker.DefaultCredential})
		if err != nil || resp.Credential.Policy != nil {
			t.Fatalf("clear policy: %v %v", resp, err)
		}
	})

	t.Run("import", func(t *testing.T) {
		resp, err := h.admin.ImportCredential(ctx, &pb.ImportCredentialRequest{Name: "imported", Value: []byte("sk_test_IMPORTED"), Source: "fernet"})
		if err != nil || resp.Credential.Version != 1 {
			t.Fatalf("import: %v %v", resp, err)
		}
		hist, _ := h.admin.CredentialHistory(ctx, &pb.CredentialHistoryRequest{Name: "imported"})
		if hist.Versions[0].How != "import" {
			t.Fatalf("imported version: %v", hist.Versions[0])
		}
		_, err = h.admin.ImportCredential(ctx, &pb.ImportCredentialRequest{Name: "imported", Value: []byte("x"), Source: "fernet"})
		requireGRPCStatus(t, err, codes.AlreadyExists, "already exists")
		_, err = h.admin.ImportCredential(ctx, &pb.ImportCredentialRequest{Name: "x", Value: []byte("x"), Source: "Bad Source"})
		requireGRPCStatus(t, err, codes.InvalidArgument, "import source")
	})

	t.Run("rekey", func(t *testing.T) {
		before, _ := h.admin.Status(ctx, &pb.StatusRequest{})
		resp, err := h.admin.Rekey(ctx, &pb.RekeyRequest{})
		if err != nil || resp.NewPrimaryKeyId == before.DataPrimaryKeyId || resp.Reencrypted != resp.Total || resp.Total == 0 {
			t.Fatalf("rekey: %v %v", resp, err)
		}
		after, _ := h.admin.Status(ctx, &pb.StatusRequest{})
		if after.DataPrimaryKeyId != resp.NewPrimaryKeyId || len(after.DataKeys) != 1 || !after.DataKeys[0].Primary ||
			after.DataKeys[0].Versions != resp.Total || len(after.MasterKeyIds) != 1 {
			t.Fatalf("status after rekey: %v", after)
		}
		tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}}).Token
		if _, err := h.search.Search(withToken(tok), &pb.SearchRequest{Query: "after rekey"}); err != nil {
			t.Fatal(err)
		}
	})
}
