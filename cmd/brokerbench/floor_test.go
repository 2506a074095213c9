package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestFloorCommit runs the floor+commit server's Search against a fake upstream with a real
// bbolt file: every answered call is one commit, timed and handed out once by the endpoint, and a
// failed commit fails the call.
func TestFloorCommit(t *testing.T) {
	const key = "sk-floor-commit-test"
	up := scaviotest.NewServer(key)
	defer up.Close()
	c, err := openCommitter(filepath.Join(t.TempDir(), "floor-commit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	tc := &timedCommits{commit: c.commit}
	f := &floorServer{hc: &http.Client{}, target: up.URL + scaviotest.SearchPath, key: key, commit: tc.do}
	stats := httptest.NewServer(tc)
	defer stats.Close()
	ctx := context.Background()

	for i := range 3 {
		out, err := f.Search(ctx, &pb.SearchRequest{Query: "q"})
		if err != nil {
			t.Fatalf("search %d: %v", i, err)
		}
		if len(out.Results) == 0 {
			t.Fatalf("search %d: no results", i)
		}
	}
	lats, err := commitLatencies(ctx, stats.URL+commitsPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(lats) != 3 || lats[0] <= 0 || lats[0] > lats[1] || lats[1] > lats[2] {
		t.Errorf("latencies %v, want 3, positive and sorted", lats)
	}
	if again, err := commitLatencies(ctx, stats.URL+commitsPath); err != nil || len(again) != 0 {
		t.Errorf("second read = %v, %v; want none: each read hands out what came since the last", again, err)
	}
	var n int
	if err := c.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(probeBucket).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d values committed, want 3 (one per call)", n)
	}
	if _, err := commitLatencies(ctx, stats.URL+"/other"); err == nil {
		t.Error("another path answered")
	}
	resp, err := http.Post(stats.URL+commitsPath, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST: %s, want 404", resp.Status)
	}

	f.commit = func() error { return errors.New("disk full") }
	if _, err := f.Search(ctx, &pb.SearchRequest{Query: "q"}); status.Code(err) != codes.Unavailable {
		t.Errorf("failed commit: %v, want Unavailable", err)
	}
}
