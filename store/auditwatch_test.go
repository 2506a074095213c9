package store

import (
	"context"
	"testing"
	"time"
)

// ScanAudit reports the last record it read even when since skipped it, so a watcher resumes after
// an old log instead of scanning it again at every commit.
func TestScanAuditResumesAfterSkippedRecords(t *testing.T) {
	s, _, _ := openStore(t)
	appendN(t, s, 5, t0) // records at t0 .. t0+4s, in whatever order the appends landed
	tests := []struct {
		after    uint64
		since    time.Time
		limit    int
		wantN    int
		wantLast uint64
	}{
		{0, time.Time{}, 10, 5, 5},
		{0, t0.Add(time.Hour), 10, 0, 5}, // all skipped by since, all read
		{2, time.Time{}, 2, 2, 4},        // a full page stops at its last record
		{5, time.Time{}, 10, 0, 5},       // nothing new: resume where it was
	}
	for _, tc := range tests {
		recs, last, err := s.ScanAudit(tc.after, tc.since, tc.limit)
		if err != nil || len(recs) != tc.wantN || last != tc.wantLast {
			t.Errorf("ScanAudit(%d, %v, %d) = %d records, last %d, %v; want %d, last %d", tc.after, tc.since, tc.limit, len(recs), last, err, tc.wantN, tc.wantLast)
		}
	}
}

// AuditCommitted is closed by the next commit that lands and by Close, not before.
func TestAuditCommittedSignal(t *testing.T) {
	s, _, _ := openStore(t)
	ch := s.AuditCommitted()
	select {
	case <-ch:
		t.Fatal("closed before any commit")
	default:
	}
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch: // AppendAudit returns after the commit, which closed it
	default:
		t.Fatal("not closed by the commit")
	}
	ch = s.AuditCommitted()
	s.Close()
	select {
	case <-ch:
	default:
		t.Fatal("not closed when the store closed")
	}
	select {
	case <-s.AuditClosed():
	default:
		t.Fatal("AuditClosed open after Close")
	}
}
