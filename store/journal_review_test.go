package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A checkpoint's bbolt commit becomes visible a moment before the writer hands readers an empty
// journal view (pendMu). A reader whose transaction starts in that moment sees the records in the
// database and, as the journal's tail, the same records again: VerifyAudit must not call that
// tampering, nor CheckIntegrity take the stale tail's last seq for the head. The test puts the
// writer's reader-facing state back to what it is in that moment (the writer is idle).
func TestJournalReadersInCheckpointWindow(t *testing.T) {
	s, _, _ := openJournalStore(t)
	appendSeq(t, s, 1, 3) // journal only
	oldTx, oldView := s.audit.pendingSince()
	if len(oldView) != 3 {
		t.Fatalf("%d records in the journal view, want 3", len(oldView))
	}
	mintAudited(t, s, testToken("minted", 0)) // checkpoints 1..3 and commits record 4 with the token
	newTx, newView := s.audit.pendingSince()
	if len(newView) != 0 {
		t.Fatalf("journal view after a bbolt commit: %d records", len(newView))
	}
	s.audit.pendMu.Lock()
	s.audit.pendTx, s.audit.pendView = oldTx, oldView // the moment before commitDB updates them
	s.audit.pendMu.Unlock()
	defer func() {
		s.audit.pendMu.Lock()
		s.audit.pendTx, s.audit.pendView = newTx, newView
		s.audit.pendMu.Unlock()
	}()
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 4 || v.LastSeq != 4 {
		t.Errorf("VerifyAudit in the checkpoint window: %+v %v; want OK, 4 records", v, err)
	}
	if r, err := s.CheckIntegrity(); err != nil || !r.OK() || r.HeadSeq != 4 {
		t.Errorf("CheckIntegrity in the checkpoint window: %+v %v; want OK, head 4", r, err)
	}
	recs, last, err := s.ScanAudit(0, time.Time{}, 100)
	if err != nil || len(recs) != 4 || last != 4 {
		t.Errorf("ScanAudit in the checkpoint window: %d records, last %d, %v", len(recs), last, err)
	}
	if rec, ok, err := s.NewestAudit(); err != nil || !ok || rec.Seq != 4 {
		t.Errorf("NewestAudit in the checkpoint window: %d %v %v", rec.Seq, ok, err)
	}
}

// Appends from many goroutines with checkpoints as often as the writer can run them (and mints,
// which checkpoint too), while readers page through the log, verify it and check integrity: no
// reader sees a gap, a duplicate, a record going back, or a false tamper report.
func TestJournalReadersDuringCheckpointsStress(t *testing.T) {
	kek, _ := newKEK(t)
	s, err := Open(filepath.Join(t.TempDir(), "broker.db"), kek, Options{AuditCheckpointInterval: time.Microsecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, perWriter, mints = 6, 150, 20
	var wg, readers sync.WaitGroup
	var stop atomic.Bool
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				rec := AuditRecord{Time: t0, Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: fmt.Sprintf("w%d-%d", w, i)}
				if err := s.AppendAudit(context.Background(), rec); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range mints {
			tk := testToken(fmt.Sprintf("mint%d", i), 0)
			if err := s.PutTokenAudited(context.Background(), tk, AuditRecord{Time: t0, Method: "mint", Code: "OK", TokenID: tk.ID}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	readers.Go(func() { // pages through the log from the start, over and over
		for !stop.Load() {
			var after uint64
			for {
				recs, last, err := s.ScanAudit(after, time.Time{}, 37)
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range recs {
					if r.Seq != after+1 {
						t.Errorf("ScanAudit after %d: record %d (a gap or a duplicate)", after, r.Seq)
						return
					}
					after = r.Seq
				}
				if last != after {
					t.Errorf("ScanAudit: last %d, records up to %d", last, after)
					return
				}
				if len(recs) == 0 {
					break
				}
			}
		}
	})
	readers.Go(func() {
		for !stop.Load() {
			if v, err := s.VerifyAudit(); err != nil || !v.OK {
				t.Errorf("VerifyAudit during checkpoints: %+v %v", v, err)
				return
			}
		}
	})
	readers.Go(func() {
		for !stop.Load() {
			if r, err := s.CheckIntegrity(); err != nil || !r.OK() {
				t.Errorf("CheckIntegrity during checkpoints: %+v %v", r, err)
				return
			}
		}
	})
	readers.Go(func() {
		var newest uint64
		for !stop.Load() {
			rec, ok, err := s.NewestAudit()
			if err != nil {
				t.Error(err)
				return
			}
			if ok && rec.Seq < newest {
				t.Errorf("NewestAudit went back from %d to %d", newest, rec.Seq)
				return
			}
			newest = rec.Seq
		}
	})
	wg.Wait()
	stop.Store(true)
	readers.Wait()
	verifyOK(t, s, writers*perWriter+mints)
}

// A checkpoint whose commit failed although the transaction became visible (the fdatasync after
// bbolt's meta page failed: commitGuard) is not known to be on disk. The journal still holds its
// records, and must keep them until brokerd restarts: the store stops taking writes (fail-stop),
// so no later group overwrites them. If it did, a power loss that took the checkpoint with it
// would leave a database without records 1..5 and a journal that skips them.
func TestJournalKeptWhenCheckpointDurabilityInDoubt(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 5)
	before, err := os.ReadFile(path) // the database as the disk may still hold it after the failed sync
	if err != nil {
		t.Fatal(err)
	}
	s.guard.fault.Store(&commitFault{landed: true})
	if err := s.CheckpointAudit(); err != nil {
		t.Fatalf("checkpoint that landed: %v", err)
	}
	err = s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: "after"})
	if !errors.Is(err, ErrAuditUnavailable) || !errors.Is(err, ErrSyncFailed) {
		t.Errorf("append after a checkpoint of doubtful durability: %v; want ErrAuditUnavailable, ErrSyncFailed", err)
	}
	img := crashImage(t, path)
	if err := os.WriteFile(img, before, 0o600); err != nil { // the checkpoint never reached the disk
		t.Fatal(err)
	}
	r, err := reopen(t, img, kek)
	if err != nil {
		t.Fatalf("reopen after losing the doubtful checkpoint: %v", err)
	}
	recs, _ := r.ListAudit(0, time.Time{}, 10)
	if len(recs) != 5 || recs[4].TokenID != "tok5" {
		t.Fatalf("after recovery %d records, want the 5 acknowledged before the checkpoint", len(recs))
	}
	verifyOK(t, r, 5)
}

// A journal whose creation a crash cut short (the file exists, its blocks never written: zeros)
// holds no record; brokerd starts over with it instead of calling it foreign.
func TestJournalCreationCutShortIsFresh(t *testing.T) {
	for _, size := range []int{4096, journalSize} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s, path, kek := openJournalStore(t)
			direct := s.audit.jr.w != s.audit.jr.f // this file system takes O_DIRECT
			appendSeq(t, s, 1, 2)
			s.Close()
			if err := os.WriteFile(JournalPath(path), make([]byte, size), 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := reopen(t, path, kek)
			if err != nil {
				t.Fatalf("Open with a zero-filled journal: %v", err)
			}
			// Started over as a new one is: with O_DIRECT where it was, not through the page cache
			// (where every fdatasync writes the whole file).
			if got := r.audit.jr.w != r.audit.jr.f; got != direct {
				t.Errorf("journal started over writes with O_DIRECT %v, a new one %v", got, direct)
			}
			appendSeq(t, r, 3, 1)
			verifyOK(t, r, 3)
		})
	}
}

// A record longer than recovery reads a frame to be (maxJournalFrame) is acknowledged like any
// other; it must not be written where recovery would take it for a torn write and drop it with
// every record after it.
func TestJournalOversizedRecordSurvivesCrash(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 1)
	big := AuditRecord{Time: t0, Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: "big", Exe: "/" + strings.Repeat("x", maxJournalFrame)}
	if err := s.AppendAudit(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	appendSeq(t, s, 3, 1)
	r, err := reopen(t, crashImage(t, path), kek)
	if err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, 3)
}

// A database removed (to start a new one) beside a journal with records: Open says what the
// journal is and what to do, and creates nothing, instead of creating a database and then calling
// the old journal's records edited.
func TestJournalWithoutItsDatabase(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 3)
	s.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := reopen(t, path, kek)
	if err == nil || !strings.Contains(err.Error(), "remove the journal to start a new database") {
		t.Fatalf("Open beside another database's journal: %v", err)
	}
	if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("Open created the database anyway: %v", serr)
	}
	if err := os.Remove(JournalPath(path)); err != nil {
		t.Fatal(err)
	}
	r, err := reopen(t, path, kek)
	if err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, 0)
}
