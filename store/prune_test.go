package store

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"
)

// Retention deletes in bounded batches between group commits (issue 16, item 3): pruning 215k
// records in one transaction stalled a call for 3.4 s. Here 2500 old records are pruned; the
// test checks, by the order of commits on the writer rather than by timing, that
//   - no transaction deletes more than maxPruneBatch records,
//   - an append queued while the first batch runs commits before the second batch,
//   - the chain verifies after every batch, and a copy of the file taken between two batches
//     (what a crash there leaves) opens and verifies.
func TestAuditPruneInBatchesBetweenCommits(t *testing.T) {
	kek, _ := newKEK(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	var (
		s          *Store
		batches    []int // records deleted by each prune transaction
		armed      bool
		appendedAt = -1 // prune batches committed before the interleaved append's commit
		appended   = make(chan error, 1)
		verifies   []AuditVerification
		snapshot   = filepath.Join(dir, "between-batches.db")
	)
	// Both hooks run on the writer goroutine, one at a time.
	opts := Options{
		OnAuditPrune: func(n int, _ time.Duration, err error) {
			if err != nil {
				t.Errorf("prune batch: %v", err)
				return
			}
			batches = append(batches, n)
			v, err := s.VerifyAudit()
			if err != nil {
				t.Error(err)
			}
			verifies = append(verifies, v)
			if len(batches) != 1 {
				return
			}
			// Between batches 1 and 2: copy the file (a crash here leaves exactly this), and
			// queue a call's append; it must not wait for the rest of the prune.
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(snapshot, raw, 0o600); err != nil {
				t.Error(err)
			}
			armed = true
			go func() {
				appended <- s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(3 * time.Hour), Method: "/m", Code: "OK"})
			}()
			for len(s.audit.reqs) == 0 { // wait for the event itself: the append is queued
				runtime.Gosched()
			}
		},
		OnAuditCommit: func(int, time.Duration, error) {
			if armed && appendedAt < 0 {
				appendedAt = len(batches)
			}
		},
	}
	var err error
	if s, err = Open(path, kek, opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendN(t, s, 2500, t0) // t0 .. t0+2499s
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(2 * time.Hour), Method: "/m", Code: "OK"}); err != nil {
		t.Fatal(err)
	}

	n, err := s.PruneAudit(context.Background(), t0.Add(time.Hour), math.MaxInt)
	if err != nil || n != 2500 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	if want := []int{1000, 1000, 500}; !slices.Equal(batches, want) {
		t.Errorf("records per prune transaction = %v, want %v (at most %d each)", batches, want, maxPruneBatch)
	}
	if appendedAt != 1 {
		t.Errorf("an append queued during prune batch 1 committed after %d batches, want 1 (it waited behind the prune)", appendedAt)
	}
	for i, v := range verifies {
		if want := uint64(min(1000*(i+1), 2500) + 1); !v.OK || v.FirstSeq != want {
			t.Errorf("after prune batch %d: %+v, want OK from record %d", i+1, v, want)
		}
	}
	if v, _ := s.VerifyAudit(); !v.OK || v.FirstSeq != 2501 || v.Checked != 2 {
		t.Errorf("after the prune: %+v", v)
	}

	s2, err := Open(snapshot, kek, Options{})
	if err != nil {
		t.Fatalf("the file as a crash between two prune batches leaves it: %v", err)
	}
	defer s2.Close()
	if v, _ := s2.VerifyAudit(); !v.OK || v.FirstSeq != 1001 || v.LastSeq != 2501 {
		t.Errorf("the file as a crash between two prune batches leaves it: %+v", v)
	}
}

// A bounded prune stops between batches, where a crash or a shutdown would; the database
// reopens verifiable, takes appends, and a later prune finishes the job.
func TestAuditPruneLimitThenReopen(t *testing.T) {
	s, path, kek := openStore(t)
	appendN(t, s, 2500, t0)
	n, err := s.PruneAudit(context.Background(), t0.Add(time.Hour), 1500)
	if err != nil || n != 1500 {
		t.Fatalf("prune with limit 1500: %d %v", n, err)
	}
	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if v, _ := s2.VerifyAudit(); !v.OK || v.FirstSeq != 1501 || v.Checked != 1000 {
		t.Fatalf("reopened after a partial prune: %+v", v)
	}
	appendN(t, s2, 3, t0.Add(2*time.Hour))
	if n, err := s2.PruneAudit(context.Background(), t0.Add(time.Hour), math.MaxInt); err != nil || n != 1000 {
		t.Fatalf("the rest: %d %v", n, err)
	}
	if v, _ := s2.VerifyAudit(); !v.OK || v.FirstSeq != 2501 || v.Checked != 3 {
		t.Fatalf("after the rest: %+v", v)
	}
	// A cancelled prune deletes nothing (these three records are older than its cutoff).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := s2.PruneAudit(ctx, t0.Add(3*time.Hour), math.MaxInt); n != 0 || err == nil {
		t.Fatalf("cancelled prune: %d %v", n, err)
	}
}

// The prune reads a record's seq and time from the front of its body; it must agree with the full
// decode, and fall back to it for any other shape.
func TestAuditRecordTime(t *testing.T) {
	rec := AuditRecord{Seq: 42, Time: t0.Add(1234567 * time.Nanosecond), Method: "/m", Code: "OK", TokenID: "tok", Prev: []byte{1, 2}}
	marshalled, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		body    string
		wantSeq uint64
		wantErr bool
	}{
		{"as written", string(marshalled), 42, false},
		{"fields reordered", `{"time":"2026-11-25T12:00:00.001234567Z","method":"/m","seq":42,"code":"OK","prev":null}`, 42, false},
		{"spaces", `{"seq": 42, "time": "2026-11-25T12:00:00.001234567Z", "method":"/m", "code":"OK"}`, 42, false},
		{"seq 0", `{"seq":0,"time":"2026-11-25T12:00:00.001234567Z","method":"/m"}`, 0, true},
		{"bad time", `{"seq":42,"time":"yesterday","method":"/m"}`, 0, true},
		{"garbage", `{"seq":42,"time":"2026`, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, at, err := auditRecordTime([]byte(tc.body))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %d %s, want an error", seq, at)
				}
				return
			}
			if err != nil || seq != tc.wantSeq || !at.Equal(rec.Time) {
				t.Fatalf("got %d %s %v, want %d %s", seq, at, err, tc.wantSeq, rec.Time)
			}
		})
	}
}
