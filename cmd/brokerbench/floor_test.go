package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestFloorDurableOp runs the floor+commit and floor+write servers' Search against a fake
// upstream, with a real bbolt file and a real preallocated journal file: every answered call is
// one durable operation, timed and handed out once by the endpoint, and a failed one fails the
// call.
func TestFloorDurableOp(t *testing.T) {
	const key = "sk-floor-commit-test"
	for _, tc := range []struct {
		name string
		// open makes the operation in dir; done checks that n of them reached the file.
		open func(t *testing.T, dir string) (op func() error, done func(n int))
	}{
		{"commit", func(t *testing.T, dir string) (func() error, func(int)) {
			c, err := openCommitter(filepath.Join(dir, "floor-commit.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.close() })
			return c.commit, func(n int) {
				var keys int
				if err := c.db.View(func(tx *bolt.Tx) error { keys = tx.Bucket(probeBucket).Stats().KeyN; return nil }); err != nil {
					t.Fatal(err)
				}
				if keys != n {
					t.Errorf("%d values committed, want %d (one per call)", keys, n)
				}
			}
		}},
		{"write", func(t *testing.T, dir string) (func() error, func(int)) {
			path := filepath.Join(dir, "floor-write.journal")
			w, err := openJournalWriter(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { w.close() })
			return w.write, func(n int) {
				if w.writes != int64(n) {
					t.Errorf("%d writes, want %d (one per call)", w.writes, n)
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if len(b) != probeFileSize || !bytes.Equal(b[:probeBlock], bytes.Repeat([]byte{0xa5}, probeBlock)) || b[probeBlock] != 0 {
					t.Errorf("journal file: %d bytes, first block written %v, want %d bytes and only the first block", len(b), b[0] == 0xa5, probeFileSize)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := scaviotest.NewServer(key)
			defer up.Close()
			op, done := tc.open(t, t.TempDir())
			timed := &timedOps{op: op}
			f := &floorServer{hc: &http.Client{}, target: up.URL + scaviotest.SearchPath, key: key, durable: timed.do}
			stats := httptest.NewServer(timed)
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
			lats, err := opLatencies(ctx, stats.URL+opsPath)
			if err != nil {
				t.Fatal(err)
			}
			if len(lats) != 3 || lats[0] <= 0 || lats[0] > lats[1] || lats[1] > lats[2] {
				t.Errorf("latencies %v, want 3, positive and sorted", lats)
			}
			if again, err := opLatencies(ctx, stats.URL+opsPath); err != nil || len(again) != 0 {
				t.Errorf("second read = %v, %v; want none: each read hands out what came since the last", again, err)
			}
			done(3)
			if _, err := opLatencies(ctx, stats.URL+"/other"); err == nil {
				t.Error("another path answered")
			}
			resp, err := http.Post(stats.URL+opsPath, "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("POST: %s, want 404", resp.Status)
			}

			timed.op = func() error { return errors.New("disk full") }
			if _, err := f.Search(ctx, &pb.SearchRequest{Query: "q"}); status.Code(err) != codes.Unavailable {
				t.Errorf("failed operation: %v, want Unavailable", err)
			}
			if lats, err := opLatencies(ctx, stats.URL+opsPath); err != nil || len(lats) != 0 {
				t.Errorf("after a failed operation: %v, %v; want nothing timed", lats, err)
			}
		})
	}
}

// serve-floor makes one durable operation per call, not two.
func TestServeFloorOneDurableOp(t *testing.T) {
	err := serveFloor(context.Background(), []string{"--commit-db", "a.db", "--write-file", "b.journal"})
	if err == nil || !strings.Contains(err.Error(), "one durable operation per call") {
		t.Errorf("both flags: %v", err)
	}
}

// TestDurableOp: serve-floor's flags make the operation they name, on the file they name.
func TestDurableOp(t *testing.T) {
	dir := t.TempDir()
	db, journal := filepath.Join(dir, "op.db"), filepath.Join(dir, "op.journal")
	for _, tc := range []struct {
		name              string
		commitDB, journal string
		check             func(t *testing.T)
	}{
		{"--commit-db: a bbolt commit", db, "", func(t *testing.T) {
			c, err := openCommitter(db) // reopens the file the operation committed to
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			var keys int
			c.db.View(func(tx *bolt.Tx) error { keys = tx.Bucket(probeBucket).Stats().KeyN; return nil })
			if keys != 1 {
				t.Errorf("%d values in %s, want the 1 committed", keys, db)
			}
			if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the journal file was made too: %v", err)
			}
		}},
		{"--write-file: the journal's write", "", journal, func(t *testing.T) {
			b, err := os.ReadFile(journal)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != probeFileSize || b[0] != 0xa5 {
				t.Errorf("%s: %d bytes, first byte %#x; want %d, written", journal, len(b), b[0], probeFileSize)
			}
		}},
		{"neither: the floor", "", "", func(*testing.T) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op, closeOp, err := durableOp(tc.commitDB, tc.journal)
			if err != nil {
				t.Fatal(err)
			}
			if (op == nil) != (tc.commitDB == "" && tc.journal == "") {
				t.Fatalf("operation %v for flags %q %q", op != nil, tc.commitDB, tc.journal)
			}
			if op != nil {
				if err := op(); err != nil {
					t.Fatal(err)
				}
			}
			if err := closeOp(); err != nil {
				t.Fatal(err)
			}
			tc.check(t)
		})
	}
	if _, _, err := durableOp(db, journal); !errors.Is(err, errTwoDurableOps) {
		t.Errorf("both flags: %v, want errTwoDurableOps", err)
	}
}
