package grpcapi

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/metrics"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// auditRecords returns every audit record, read from the store (so reading adds none).
func (h *harness) auditRecords(t *testing.T) []store.AuditRecord {
	t.Helper()
	recs, err := h.store.ListAudit(0, time.Time{}, 100000)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// byEvent returns the records with event ev, and the sum of their counts.
func byEvent(recs []store.AuditRecord, ev string) ([]store.AuditRecord, uint64) {
	var out []store.AuditRecord
	var sum uint64
	for _, r := range recs {
		if r.Event == ev {
			out = append(out, r)
			sum += r.Count
		}
	}
	return out, sum
}

// A flood of calls without a valid token costs a bounded number of audit records, not one each:
// the first of each (uid, reason) at once, the rest as one count record per interval; the counts
// add up to the number of calls, the chain still verifies, and every refusal is in the metric.
func TestRefusalsWithoutTokenAreCoalesced(t *testing.T) {
	h := newHarness(t)
	before := h.auditRecords(t)
	noTok0 := refusals(t, broker.RefusedNoToken)
	badTok0 := refusals(t, broker.RefusedInvalidToken)
	const n, bad = 1000, 300
	for range n {
		_, err := h.search.Search(context.Background(), &pb.SearchRequest{Query: "q"})
		requireGRPCStatus(t, err, codes.Unauthenticated, "no token")
	}
	for range bad {
		_, err := h.search.WhoAmI(withToken("cbt_nonsense"), &pb.WhoAmIRequest{})
		requireGRPCStatus(t, err, codes.Unauthenticated, "invalid token")
	}
	recs := h.auditRecords(t)
	if got := len(recs) - len(before); got != 2 {
		t.Fatalf("%d refused calls wrote %d audit records before the interval closed, want 2 (the first of each reason)", n+bad, got)
	}
	if err := h.b.FlushRefusals(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs = h.auditRecords(t)
	for _, c := range []struct {
		event  string
		method string
		want   uint64
	}{
		{broker.RefusedNoToken, "/credbroker.v1.SearchService/Search", n},
		{broker.RefusedInvalidToken, "/credbroker.v1.SearchService/WhoAmI", bad},
	} {
		got, sum := byEvent(recs, c.event)
		if len(got) != 2 || sum != c.want {
			t.Fatalf("%s: %d records counting %d, want 2 counting %d: %+v", c.event, len(got), sum, c.want, got)
		}
		if got[0].Count != 1 || got[1].Count != c.want-1 {
			t.Errorf("%s: counts %d, %d; want 1 at once and %d coalesced", c.event, got[0].Count, got[1].Count, c.want-1)
		}
		for _, r := range got {
			if r.Code != "Unauthenticated" || r.Method != c.method || !r.PeerKnown || r.UID != h.uid() {
				t.Errorf("%s record: %+v", c.event, r)
			}
		}
	}
	if d := refusals(t, broker.RefusedNoToken) - noTok0; d != n {
		t.Errorf("metric counted %v no-token refusals, want %d", d, n)
	}
	if d := refusals(t, broker.RefusedInvalidToken) - badTok0; d != bad {
		t.Errorf("metric counted %v invalid-token refusals, want %d", d, bad)
	}

	// A quiet interval writes nothing and forgets the keys; the next refusal is written at once.
	for range 2 {
		if err := h.b.FlushRefusals(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(h.auditRecords(t)); got != len(recs) {
		t.Fatalf("quiet intervals wrote %d records", got-len(recs))
	}
	h.search.Search(context.Background(), &pb.SearchRequest{Query: "q"})
	if got, _ := byEvent(h.auditRecords(t), broker.RefusedNoToken); len(got) != 3 || got[2].Count != 1 {
		t.Fatalf("refusal after a quiet interval: %+v", got)
	}
	if v, err := h.store.VerifyAudit(); err != nil || !v.OK {
		t.Fatalf("audit chain: %+v %v", v, err)
	}
}

// A count whose record cannot be written (disk full) is kept and goes into the next record.
func TestRefusalCountsSurviveAuditFailure(t *testing.T) {
	h := newHarness(t)
	h.search.Search(context.Background(), &pb.SearchRequest{Query: "q"}) // written at once
	h.store.InjectAuditFailure(errors.New("injected: no space left on device"))
	for range 5 {
		// With the audit unwritable, the gate refuses before authentication; count the ones
		// that do reach it directly.
		h.b.RecordRefusal(context.Background(), broker.CallRecord{Method: "/credbroker.v1.SearchService/Search", Caller: broker.Caller{Known: true, UID: h.uid()}, Code: "Unauthenticated"}, broker.RefusedNoToken)
	}
	if err := h.b.FlushRefusals(context.Background()); err == nil {
		t.Fatal("flush with the audit log failing reported no error")
	}
	h.store.InjectAuditFailure(nil)
	if err := h.b.FlushRefusals(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, sum := byEvent(h.auditRecords(t), broker.RefusedNoToken); len(got) != 2 || sum != 6 {
		t.Fatalf("records %+v (sum %d), want 2 counting 6", got, sum)
	}
}

// An admin call from a caller who is not an admin is refused before anything is written for it:
// no "Started" record (it would claim a change began), only the coalesced refusal.
func TestRefusedAdminCallLeavesNoStartedRecord(t *testing.T) {
	// Without peer credentials brokerd cannot tell the caller's uid, so no caller is an admin
	// (the test may run as root, and root always is one).
	h := newHarnessOpts(t, func(c *broker.Config) { c.Economics.DefaultCacheTTL = -1 }, func(o *Options) {
		o.ServerOptions = append(o.ServerOptions, grpc.Creds(insecure.NewCredentials()))
	})
	for range 20 {
		_, err := h.admin.PutCredential(context.Background(), &pb.PutCredentialRequest{Name: "scavio_api_key", Value: []byte(testKey)})
		requireGRPCStatus(t, err, codes.PermissionDenied, "admin calls need a Unix-socket peer")
		_, err = h.admin.RevokeToken(context.Background(), &pb.RevokeTokenRequest{Id: "x"})
		requireGRPCStatus(t, err, codes.PermissionDenied, "")
	}
	if err := h.b.FlushRefusals(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := h.auditRecords(t)
	for _, r := range recs {
		if r.Code == "Started" {
			t.Errorf("refused admin call left a Started record: %+v", r)
		}
	}
	if got, sum := byEvent(recs, broker.RefusedNotAdmin); len(got) != 2 || sum != 40 || got[0].Code != "PermissionDenied" {
		t.Fatalf("not-admin records %+v (sum %d), want 2 counting 40", got, sum)
	}
	if _, _, err := h.store.LoadCredential("scavio_api_key"); err == nil {
		t.Fatal("a refused PutCredential stored its credential")
	}
}

// uid is the uid the harness's calls come from.
func (h *harness) uid() uint32 { return uint32(os.Getuid()) }

// refusals reads credbroker_refusals_total{reason}.
func refusals(t *testing.T, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.Refusals.WithLabelValues(reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
