package grpcapi

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// lastSeq reads the newest record's seq straight from the store (an RPC would add a record).
func lastSeq(t *testing.T, st *store.Store) uint64 {
	t.Helper()
	recs, err := st.ListAudit(0, time.Time{}, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		return 0
	}
	return recs[len(recs)-1].Seq
}

// waitForRecord waits, on the audit writer's commit signal rather than a sleep, until a record
// after afterSeq satisfies ok, and returns it.
func waitForRecord(t *testing.T, st *store.Store, afterSeq uint64, ok func(store.AuditRecord) bool) store.AuditRecord {
	t.Helper()
	deadline := time.After(30 * time.Second) // a hang guard, not a timing assumption
	for {
		committed := st.AuditCommitted()
		recs, err := st.ListAudit(afterSeq, time.Time{}, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if ok(r) {
				return r
			}
		}
		select {
		case <-committed:
		case <-deadline:
			t.Fatal("the record never came")
		}
	}
}

// A follower gets every record once, in order, and the log grows by the watch's own two records
// (start and end) and the calls it watched, nothing per record sent or per poll.
func TestWatchAuditStreamsWithoutGrowingTheLog(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	before := lastSeq(t, h.store)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.admin.WatchAudit(ctx, &pb.WatchAuditRequest{AfterSeq: before})
	if err != nil {
		t.Fatal(err)
	}
	var got []*pb.AuditRecord
	recv := func(n int) {
		t.Helper()
		for len(got) < n {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("after %d records: %v", len(got), err)
			}
			got = append(got, resp.GetRecords()...)
		}
	}
	recv(1)
	if r := got[0]; r.Seq != before+1 || r.Method != watchAuditMethod || r.Code != "Started" || r.Event != "watch" || !r.PeerKnown {
		t.Fatalf("first record is not the watch's start: %+v", r)
	}

	const n = 7
	for i := range n {
		if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "watch me"}); err != nil {
			t.Fatalf("search %d: %v", i, err)
		}
	}
	recv(1 + n)
	if len(got) != 1+n {
		t.Fatalf("got %d records, want %d", len(got), 1+n)
	}
	for i, r := range got[1:] {
		if r.Seq != before+2+uint64(i) || r.Method != "/credbroker.v1.SearchService/Search" || r.Code != "OK" {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	if last := lastSeq(t, h.store); last != before+1+n {
		t.Fatalf("the log grew by %d records while following %d calls, want %d (the watch's start and the calls)", last-before, n, 1+n)
	}

	cancel()
	end := waitForRecord(t, h.store, before+1+n, func(r store.AuditRecord) bool { return r.Method == watchAuditMethod })
	if end.Seq != before+2+n || end.Code != codes.Canceled.String() {
		t.Fatalf("end of the watch recorded as %+v, want seq %d code Canceled", end, before+2+n)
	}
}

// The backlog comes first, a page at a time, filtered by since, then the stream goes on live.
func TestWatchAuditBacklogAndSince(t *testing.T) {
	h := newHarness(t)
	for range 3 {
		if _, err := h.admin.Status(context.Background(), &pb.StatusRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	// Records before since are skipped; the clock is the broker's, moved forward.
	h.clock.Add(time.Hour)
	since := h.clock.Now()
	if _, err := h.admin.ListCredentials(context.Background(), &pb.ListCredentialsRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.admin.WatchAudit(ctx, &pb.WatchAuditRequest{Since: timestamppb.New(since)})
	if err != nil {
		t.Fatal(err)
	}
	var methods []string
	for len(methods) < 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRecords() {
			methods = append(methods, r.GetMethod())
		}
	}
	want := []string{"/credbroker.v1.AdminService/ListCredentials", watchAuditMethod}
	if len(methods) != 2 || methods[0] != want[0] || methods[1] != want[1] {
		t.Fatalf("watch since %s sent %v, want %v", since, methods, want)
	}
}

// A graceful stop ends open watches with Unavailable instead of waiting for them.
func TestWatchAuditEndsOnShutdown(t *testing.T) {
	h := newHarness(t)
	stream, err := h.admin.WatchAudit(context.Background(), &pb.WatchAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the watch's start record: the watch is running
		t.Fatal(err)
	}
	h.healthServer.Shutdown()
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("watch ended with %v, want Unavailable", err)
		}
		return
	}
}
