package grpcapi

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A registered process needs no token to call FetchToken. Once the process-bound tokens brokerd
// watches are all taken, each further FetchToken is refused before it does anything, like a call
// without a token, and is audited like one: coalesced per uid, not a record per call, so a
// registered process looping on it cannot fill the disk through the audit log.
func TestFetchTokenPastTheWatchLimitIsCoalesced(t *testing.T) {
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	h := newHarness(t)
	t.Cleanup(h.b.StopWatching) // the fetched tokens are bound to this test process
	ctx := context.Background()
	if _, err := h.admin.AddWorkload(ctx, &pb.AddWorkloadRequest{Workload: &pb.Workload{
		Name: "self", Tools: []string{"web_search"}, Uids: []uint32{uint32(os.Geteuid())}, Ttl: durationpb.New(time.Hour),
	}}); err != nil {
		t.Fatal(err)
	}
	fetched := 0
	for ; fetched <= broker.MaxWatchedTokens; fetched++ {
		if _, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{}); err != nil {
			requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
			break
		}
	}
	if fetched == 0 || fetched > broker.MaxWatchedTokens {
		t.Fatalf("fetched %d tokens before a refusal, want 1 to %d", fetched, broker.MaxWatchedTokens)
	}
	before := len(h.auditRecords(t))
	const flood = 200
	for range flood {
		_, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{})
		requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
	}
	if got := len(h.auditRecords(t)) - before; got > 1 {
		t.Fatalf("%d refused FetchTokens wrote %d audit records before the interval closed, want at most 1", flood, got)
	}
	if err := h.b.FlushRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	recs, sum := byEvent(h.auditRecords(t), broker.RefusedWatchLimit)
	if len(recs) == 0 || len(recs) > 2 || sum != flood+1 {
		t.Fatalf("%s: %d records counting %d, want 1-2 counting %d", broker.RefusedWatchLimit, len(recs), sum, flood+1)
	}
	for _, r := range recs {
		if r.Method != fetchTokenMethod || r.Code != codes.ResourceExhausted.String() || r.UID != uint32(os.Geteuid()) {
			t.Fatalf("refusal record %+v", r)
		}
	}
}
