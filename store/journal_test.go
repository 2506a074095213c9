package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// openJournalStore is openStore with no timed checkpoint (the others still run: a full journal, a
// state change, CheckpointAudit, Close). A test that looks at what the journal holds must not
// race the default 1 s timer on a loaded machine.
func openJournalStore(t *testing.T) (*Store, string, tink.AEAD) {
	t.Helper()
	kek, _ := newKEK(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{AuditCheckpointInterval: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path, kek
}

// appendSeq appends n records one after another (so their seqs follow their TokenIDs).
func appendSeq(t *testing.T, s *Store, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		rec := AuditRecord{Time: t0.Add(time.Duration(i) * time.Second), Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: fmt.Sprintf("tok%d", i)}
		if err := s.AppendAudit(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
}

// crashImage copies the database and its journal as a crash would leave them (every write that
// returned is in the page cache, so in the copies), and returns the copy's path.
func crashImage(t *testing.T, path string) string {
	t.Helper()
	dir := t.TempDir()
	cp := filepath.Join(dir, "crashed.db")
	for from, to := range map[string]string{path: cp, JournalPath(path): JournalPath(cp)} {
		raw, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cp
}

// auditBucketLen counts the records in the database's audit bucket (not the journal).
func auditBucketLen(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketAudit); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// journalFrames returns the offsets of the live frames in a journal file's content.
func journalFrames(t *testing.T, content []byte) []int {
	t.Helper()
	var offs []int
	for off := len(journalMagic); off+journalFrameHead <= len(content); {
		n := int(binary.BigEndian.Uint32(content[off:]))
		if n == 0 {
			break
		}
		offs = append(offs, off)
		off += journalFrameHead + n
	}
	return offs
}

func verifyOK(t *testing.T, s *Store, checked int) {
	t.Helper()
	v, err := s.VerifyAudit()
	if err != nil || !v.OK || v.Checked != checked {
		t.Fatalf("VerifyAudit: %+v %v; want OK with %d records", v, err, checked)
	}
}

// A record that changes no state is durable in the journal, not in bbolt: it costs no bbolt
// commit, and every reader sees it anyway (ScanAudit, NewestAudit, VerifyAudit).
func TestJournalHoldsRecordsReadersSeeThem(t *testing.T) {
	s, _, _ := openJournalStore(t)
	before := s.LastTxID()
	appendSeq(t, s, 1, 5)
	if got := s.LastTxID(); got != before {
		t.Errorf("5 appends made %d bbolt commits, want 0 (journal only)", got-before)
	}
	if n := auditBucketLen(t, s); n != 0 {
		t.Errorf("audit bucket holds %d records before a checkpoint, want 0", n)
	}
	recs, last, err := s.ScanAudit(0, time.Time{}, 10)
	if err != nil || len(recs) != 5 || last != 5 || recs[4].TokenID != "tok5" {
		t.Fatalf("ScanAudit: %d records, last %d, %v", len(recs), last, err)
	}
	if recs, _, _ := s.ScanAudit(3, time.Time{}, 1); len(recs) != 1 || recs[0].Seq != 4 {
		t.Fatalf("ScanAudit(3, limit 1): %+v", recs)
	}
	if rec, ok, err := s.NewestAudit(); err != nil || !ok || rec.Seq != 5 {
		t.Fatalf("NewestAudit: %+v %v %v", rec, ok, err)
	}
	verifyOK(t, s, 5)
	if r, err := s.CheckIntegrity(); err != nil || !r.OK() {
		t.Fatalf("CheckIntegrity: %+v %v", r, err)
	}
	checkpoint(t, s)
	if n := auditBucketLen(t, s); n != 5 {
		t.Errorf("audit bucket holds %d records after a checkpoint, want 5", n)
	}
	appendSeq(t, s, 6, 2) // the journal starts over: frames of the last round are overwritten
	verifyOK(t, s, 7)
	if recs, err := s.ListAudit(0, time.Time{}, 100); err != nil || len(recs) != 7 {
		t.Fatalf("ListAudit: %d %v", len(recs), err)
	}
}

// A state change commits with its record in bbolt, after the journal's records (one chain).
func TestStateChangeCheckpointsTheJournal(t *testing.T) {
	s, _, _ := openJournalStore(t)
	appendSeq(t, s, 1, 3)
	mintAudited(t, s, testToken("minted", 0)) // record 4
	if n := auditBucketLen(t, s); n != 4 {
		t.Fatalf("audit bucket holds %d records after a mint, want 4 (the journal's 3, then the mint's)", n)
	}
	if len(s.audit.pendingView()) != 0 {
		t.Fatal("records left in the journal after a bbolt commit")
	}
	appendSeq(t, s, 5, 1)
	verifyOK(t, s, 5)
	recs, _ := s.ListAudit(0, time.Time{}, 10)
	if len(recs) != 5 || recs[3].TokenID != "minted" || recs[4].TokenID != "tok5" {
		t.Fatalf("records: %+v", recs)
	}
}

// Close moves the journal into the database: the file alone holds every record.
func TestCloseCheckpoints(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 4)
	s.Close()
	if err := os.Remove(JournalPath(path)); err != nil {
		t.Fatal(err)
	}
	r, err := reopen(t, path, kek)
	if err != nil {
		t.Fatal(err)
	}
	if n := auditBucketLen(t, r); n != 4 {
		t.Fatalf("after Close the database holds %d records, want 4", n)
	}
	verifyOK(t, r, 4)
}

// After a crash, Open replays the journal's records into the database; the frames of earlier
// rounds left behind it are not replayed again.
func TestJournalReplayedAfterCrash(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 6)
	checkpoint(t, s)
	appendSeq(t, s, 7, 3) // overwrites the first frames of the round above
	img := crashImage(t, path)
	r, err := reopen(t, img, kek)
	if err != nil {
		t.Fatal(err)
	}
	if n := auditBucketLen(t, r); n != 9 {
		t.Fatalf("after recovery the database holds %d records, want 9", n)
	}
	verifyOK(t, r, 9)
	recs, _ := r.ListAudit(6, time.Time{}, 10)
	if len(recs) != 3 || recs[2].TokenID != "tok9" {
		t.Fatalf("records after 6: %+v", recs)
	}
	appendSeq(t, r, 10, 1)
	verifyOK(t, r, 10)
}

// Groups of every size, concurrent, cross the journal's 4 KiB blocks (each write rewrites the
// block it starts in): every record is in the file a crash leaves.
func TestJournalBlocksHoldEveryGroup(t *testing.T) {
	s, path, kek := openJournalStore(t)
	for round := range 4 {
		appendN(t, s, 1+round*37, t0) // 1, 38, 75, 112 concurrent appends
	}
	appendSeq(t, s, 1000, 3)
	const n = 1 + 38 + 75 + 112 + 3
	if p := len(s.audit.pendingView()); p != n {
		t.Fatalf("%d records in the journal, want %d (no checkpoint in this test)", p, n)
	}
	r, err := reopen(t, crashImage(t, path), kek)
	if err != nil {
		t.Fatal(err)
	}
	if got := auditBucketLen(t, r); got != n {
		t.Fatalf("recovered %d records, want %d", got, n)
	}
	verifyOK(t, r, n)
}

// A write that did not finish (its callers were never answered) is cut at the first frame whose
// length or CRC fails; what comes before it is kept.
func TestJournalTornTailDropped(t *testing.T) {
	cases := []struct {
		name string
		tear func(content []byte, last int)
	}{
		{"payload torn", func(c []byte, last int) { c[last+journalFrameHead+5] ^= 0xff }},
		{"length torn", func(c []byte, last int) { binary.BigEndian.PutUint32(c[last:], 1<<30) }},
		{"not written", func(c []byte, last int) { clear(c[last:]) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openJournalStore(t)
			appendSeq(t, s, 1, 5)
			img := crashImage(t, path)
			content, err := os.ReadFile(JournalPath(img))
			if err != nil {
				t.Fatal(err)
			}
			frames := journalFrames(t, content)
			if len(frames) != 5 {
				t.Fatalf("%d frames in the journal, want 5", len(frames))
			}
			tc.tear(content, frames[4])
			if err := os.WriteFile(JournalPath(img), content, 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := reopen(t, img, kek)
			if err != nil {
				t.Fatal(err)
			}
			verifyOK(t, r, 4)
		})
	}
}

// A journal changed by something other than brokerd is refused: an edited record (its CRC made
// right again), a record removed from the middle, and records that do not follow the database's
// chain head.
func TestJournalTamperingRefused(t *testing.T) {
	fixCRC := func(c []byte, off int) {
		n := int(binary.BigEndian.Uint32(c[off:]))
		binary.BigEndian.PutUint32(c[off+4:], crc32.Checksum(c[off+journalFrameHead:off+journalFrameHead+n], journalCRC))
	}
	cases := []struct {
		name string
		edit func(c []byte, frames []int) []byte
		want string
	}{
		{"edited", func(c []byte, f []int) []byte {
			i := strings.Index(string(c[f[2]:]), "tok3")
			c[f[2]+i+3] = '9'
			fixCRC(c, f[2])
			return c
		}, "was edited"},
		{"removed from the middle", func(c []byte, f []int) []byte {
			out := append([]byte{}, c[:f[2]]...)
			out = append(out, c[f[3]:]...)
			return out
		}, "missing"},
		{"reordered", func(c []byte, f []int) []byte {
			out := append([]byte{}, c[:f[1]]...)
			out = append(out, c[f[2]:f[3]]...)
			out = append(out, c[f[1]:f[2]]...)
			return append(out, c[f[3]:]...)
		}, "missing"},
		{"not a journal", func(c []byte, f []int) []byte { copy(c, "garbage!"); return c }, "not a credbroker audit journal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openJournalStore(t)
			appendSeq(t, s, 1, 5)
			img := crashImage(t, path)
			content, err := os.ReadFile(JournalPath(img))
			if err != nil {
				t.Fatal(err)
			}
			content = tc.edit(content, journalFrames(t, content))
			if err := os.WriteFile(JournalPath(img), content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = reopen(t, img, kek)
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v; want ErrTampered saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "restore the database and its audit journal") {
				t.Errorf("the refusal does not say what to do: %v", err)
			}
		})
	}
}

// A journal of another database (its records MACed under another audit key) is refused, whether
// or not its seqs would continue this database's chain.
func TestJournalOfAnotherDatabaseRefused(t *testing.T) {
	kek, _ := newKEK(t)
	open := func() (*Store, string) {
		path := filepath.Join(t.TempDir(), "broker.db")
		s, err := Open(path, kek, Options{AuditCheckpointInterval: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return s, path
	}
	a, pathA := open()
	appendSeq(t, a, 1, 3)
	raw, err := os.ReadFile(JournalPath(crashImage(t, pathA)))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	for _, head := range []int{0, 3} {
		b, pathB := open()
		appendSeq(t, b, 1, head)
		b.Close()
		if err := os.WriteFile(JournalPath(pathB), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := reopen(t, pathB, kek); !errors.Is(err, ErrTampered) {
			t.Fatalf("another database's journal, head %d: %v, want ErrTampered", head, err)
		}
	}
}

// The journal gets the database file's checks.
func TestJournalFileChecks(t *testing.T) {
	kek, _ := newKEK(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	if err := os.Symlink(filepath.Join(dir, "elsewhere"), JournalPath(path)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, kek, Options{}); !errors.Is(err, ErrFileOwner) {
		t.Fatalf("journal is a symbolic link: %v, want ErrFileOwner", err)
	}
	os.Remove(JournalPath(path))
	s, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	fi, err := os.Stat(JournalPath(path))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != journalSize {
		t.Fatalf("journal: %v %v", fi, err)
	}
}

// A failed journal write fails its calls (fail closed) and the next group commits to bbolt,
// after the records that did land in the journal; nothing acknowledged is lost.
func TestJournalWriteFailure(t *testing.T) {
	s, path, kek := openJournalStore(t)
	appendSeq(t, s, 1, 2)
	good := s.audit.jr.w
	ro, err := os.Open(JournalPath(path)) // writes to it fail (EBADF)
	if err != nil {
		t.Fatal(err)
	}
	s.audit.jr.w = ro // the writer is idle; the append below hands it work after this
	err = s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: "lost"})
	if !errors.Is(err, ErrAuditUnavailable) {
		t.Fatalf("append with the journal failing: %v, want ErrAuditUnavailable", err)
	}
	if err := s.AuditHealthy(); err != nil {
		t.Fatalf("AuditHealthy (probes with a bbolt commit): %v", err)
	}
	s.audit.jr.w = good
	ro.Close()
	appendSeq(t, s, 3, 1)
	verifyOK(t, s, 3)
	recs, _ := s.ListAudit(0, time.Time{}, 10)
	for _, r := range recs {
		if r.TokenID == "lost" {
			t.Fatal("the record whose write failed is in the log")
		}
	}
	img := crashImage(t, path)
	r, err := reopen(t, img, kek)
	if err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, 3)
}

// Records do not stay in the journal longer than the checkpoint interval.
func TestJournalCheckpointInterval(t *testing.T) {
	kek, _ := newKEK(t)
	done := make(chan int, 10)
	s, err := Open(filepath.Join(t.TempDir(), "broker.db"), kek, Options{AuditCheckpointInterval: time.Millisecond,
		OnAuditCheckpoint: func(n int, _ time.Duration, err error) {
			if err == nil {
				done <- n
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendSeq(t, s, 1, 1)
	if n := <-done; n != 1 {
		t.Fatalf("checkpoint moved %d records, want 1", n)
	}
	if n := auditBucketLen(t, s); n != 1 {
		t.Fatalf("audit bucket: %d records", n)
	}
}

// A journal that fills checkpoints before the next group instead of growing the file.
func TestJournalFullCheckpoints(t *testing.T) {
	s, path, _ := openJournalStore(t)
	n := journalCheckpointRecords + 10
	appendSeq(t, s, 1, n)
	if p := len(s.audit.pendingView()); p >= journalCheckpointRecords {
		t.Fatalf("%d records in the journal after %d appends, want fewer than %d", p, n, journalCheckpointRecords)
	}
	fi, err := os.Stat(JournalPath(path))
	if err != nil || fi.Size() != journalSize {
		t.Fatalf("journal size %v %v", fi.Size(), err)
	}
	verifyOK(t, s, n)
}

// A file system that accepts O_DIRECT at open but refuses the write (EINVAL) makes the journal
// write buffered from then on, without failing the write that found out. Here an unaligned buffer
// gets the EINVAL from a real O_DIRECT descriptor.
func TestJournalFallsBackToBufferedWrites(t *testing.T) {
	s, path, kek := openJournalStore(t)
	jr := s.audit.jr
	if jr.w == jr.f {
		t.Skip("this file system takes no O_DIRECT (the journal writes buffered already)")
	}
	appendSeq(t, s, 1, 2) // the writer is idle after this; the test may use the journal
	raw := make([]byte, 2*journalBlock+1)
	unaligned := raw[1 : 1+journalBlock]
	if uintptr(unsafe.Pointer(&unaligned[0]))%512 == 0 {
		unaligned = raw[2 : 2+journalBlock]
	}
	// The block the journal's frames are in, as the file holds it: rewriting it changes nothing.
	if _, err := jr.f.ReadAt(unaligned, 0); err != nil {
		t.Fatal(err)
	}
	if err := jr.WriteAt(unaligned, 0); err != nil {
		t.Fatalf("write through the fallback: %v", err)
	}
	if jr.w != jr.f {
		t.Fatal("the journal still writes through O_DIRECT after an EINVAL")
	}
	appendSeq(t, s, 3, 2)
	r, err := reopen(t, crashImage(t, path), kek)
	if err != nil {
		t.Fatal(err)
	}
	verifyOK(t, r, 4)
}

// A group is written and made durable with one pwritev2(RWF_DSYNC). A kernel or seccomp filter
// without it (ENOSYS before Linux 4.6, EPERM from a filter that does not know the call,
// EOPNOTSUPP for the flag) makes the journal write, then fdatasync, from then on; a file system
// that refuses O_DIRECT writes (EINVAL) makes it write buffered, still with the flag; a short
// write is finished the plain way and EINTR is retried; any other error fails the write as a
// failed fdatasync would. Every acknowledged record survives a crash in each case.
func TestJournalDurableWrite(t *testing.T) {
	passThrough := func() (int, bool, error) { return 0, true, nil }
	for _, tc := range []struct {
		name string
		// fake answers the call-th pwritev2 (from 1) on the O_DIRECT descriptor (direct) or the
		// buffered one, asking for n bytes; passThrough() hands the call to the kernel.
		fake      func(call int, direct bool, n int) (int, bool, error)
		calls     int  // pwritev2 calls for the three groups
		plainSync bool // after them
		buffered  bool // the journal writes through the buffered descriptor after them
		fails     bool
	}{
		{name: "dsync", fake: func(int, bool, int) (int, bool, error) { return passThrough() }, calls: 3},
		{name: "no pwritev2", fake: func(int, bool, int) (int, bool, error) { return 0, false, unix.ENOSYS }, calls: 1, plainSync: true},
		{name: "seccomp refuses pwritev2", fake: func(int, bool, int) (int, bool, error) { return 0, false, unix.EPERM }, calls: 1, plainSync: true},
		{name: "no RWF_DSYNC", fake: func(int, bool, int) (int, bool, error) { return 0, false, unix.EOPNOTSUPP }, calls: 1, plainSync: true},
		{name: "short write", fake: func(_ int, _ bool, n int) (int, bool, error) { return n / 2, false, nil }, calls: 3},
		{name: "EINTR retried", fake: func(call int, _ bool, _ int) (int, bool, error) {
			if call == 1 {
				return 0, false, unix.EINTR
			}
			return passThrough()
		}, calls: 4},
		{name: "O_DIRECT refused", fake: func(_ int, direct bool, _ int) (int, bool, error) {
			if direct {
				return 0, false, unix.EINVAL
			}
			return passThrough()
		}, calls: 4, buffered: true},
		{name: "I/O error", fake: func(int, bool, int) (int, bool, error) { return 0, false, unix.EIO }, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openJournalStore(t)
			appendSeq(t, s, 1, 2) // the writer is idle after this; the test may use the journal
			jr := s.audit.jr
			if tc.buffered && jr.w == jr.f {
				t.Skip("this file system takes no O_DIRECT (the journal writes buffered already)")
			}
			directFd := -1
			if jr.w != jr.f {
				directFd = int(jr.w.Fd())
			}
			calls := 0
			jr.pwritev2 = func(fd int, iovs [][]byte, off int64, flags int) (int, error) {
				calls++
				if flags != unix.RWF_DSYNC {
					t.Errorf("pwritev2 flags %#x, want RWF_DSYNC", flags)
				}
				if n, pass, err := tc.fake(calls, fd == directFd, len(iovs[0])); !pass {
					return n, err
				}
				return unix.Pwritev2(fd, iovs, off, flags)
			}
			err := s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(3 * time.Second), Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: "tok3"})
			if tc.fails {
				if !errors.Is(err, ErrAuditUnavailable) || !errors.Is(err, unix.EIO) {
					t.Fatalf("AppendAudit with pwritev2 failing: %v, want ErrAuditUnavailable wrapping EIO", err)
				}
				r, err := reopen(t, crashImage(t, path), kek)
				if err != nil {
					t.Fatal(err)
				}
				verifyOK(t, r, 2) // the acknowledged ones
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			appendSeq(t, s, 4, 2)
			if calls != tc.calls || jr.plainSync != tc.plainSync {
				t.Errorf("pwritev2 called %d times for 3 groups (want %d), plainSync %v (want %v)", calls, tc.calls, jr.plainSync, tc.plainSync)
			}
			if tc.buffered && jr.w != jr.f {
				t.Error("the journal still writes through O_DIRECT after the file system refused it")
			}
			r, err := reopen(t, crashImage(t, path), kek)
			if err != nil {
				t.Fatal(err)
			}
			verifyOK(t, r, 5)
		})
	}
}
