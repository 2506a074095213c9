package store

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func appendN(t *testing.T, s *Store, n int, start time.Time) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := AuditRecord{Time: start.Add(time.Duration(i) * time.Second), Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: fmt.Sprintf("tok%d", i)}
			if err := s.AppendAudit(context.Background(), rec); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

func TestAuditChainAppendAndReopen(t *testing.T) {
	s, path, kek := openStore(t)
	appendN(t, s, 50, t0)
	v, err := s.VerifyAudit()
	if err != nil || !v.OK || v.Checked != 50 || v.LastSeq != 50 {
		t.Fatalf("verify: %+v %v", v, err)
	}
	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	appendN(t, s2, 5, t0.Add(time.Hour))
	v, _ = s2.VerifyAudit()
	if !v.OK || v.Checked != 55 {
		t.Fatalf("after reopen: %+v", v)
	}
	recs, err := s2.ListAudit(50, time.Time{}, 100)
	if err != nil || len(recs) != 5 || recs[0].Seq != 51 {
		t.Fatalf("list after 50: %d %v", len(recs), err)
	}
	recs, _ = s2.ListAudit(0, t0.Add(time.Hour), 100)
	if len(recs) != 5 {
		t.Fatalf("list since: %d", len(recs))
	}
}

// checkpoint moves the audit journal's records into the database, for a test that reads or edits
// the audit bucket directly.
func checkpoint(t *testing.T, s *Store) {
	t.Helper()
	if err := s.CheckpointAudit(); err != nil {
		t.Fatal(err)
	}
}

// tamper applies fn to the audit bucket directly, as an attacker with the db file would.
func tamper(t *testing.T, s *Store, fn func(b *bolt.Bucket)) {
	t.Helper()
	checkpoint(t, s)
	if err := s.db.Update(func(tx *bolt.Tx) error { fn(tx.Bucket(bucketAudit)); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestAuditVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name    string
		fn      func(b *bolt.Bucket)
		wantSeq uint64
		want    string
	}{
		{"edited", func(b *bolt.Bucket) {
			v := bytes.Clone(b.Get(auditKey(4)))
			b.Put(auditKey(4), bytes.Replace(v, []byte(`"code":"OK"`), []byte(`"code":"XX"`), 1))
		}, 4, "edited"},
		{"removed", func(b *bolt.Bucket) { b.Delete(auditKey(5)) }, 5, "missing"},
		{"reordered", func(b *bolt.Bucket) {
			a, c := bytes.Clone(b.Get(auditKey(3))), bytes.Clone(b.Get(auditKey(6)))
			b.Put(auditKey(3), c)
			b.Put(auditKey(6), a)
		}, 3, "moved"},
		{"tail removed", func(b *bolt.Bucket) { b.Delete(auditKey(10)) }, 10, "missing"},
		{"replaced by a re-keyed copy", func(b *bolt.Bucket) {
			b.Put(auditKey(7), bytes.Clone(b.Get(auditKey(8))))
		}, 7, "moved"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := openStore(t)
			for i := range 10 { // sequential, so record i has a known position
				if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
			tamper(t, s, tc.fn)
			v, err := s.VerifyAudit()
			if err != nil {
				t.Fatal(err)
			}
			if v.OK || v.BadSeq != tc.wantSeq || !strings.Contains(v.Problem, tc.want) {
				t.Fatalf("got %+v, want bad seq %d with %q", v, tc.wantSeq, tc.want)
			}
		})
	}
}

func TestAuditPruneKeepsChainVerifiable(t *testing.T) {
	s, _, _ := openStore(t)
	for i := range 10 {
		if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(time.Duration(i) * time.Hour), Method: "/m", Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneAudit(context.Background(), t0.Add(4*time.Hour), 100)
	if err != nil || n != 4 {
		t.Fatalf("prune: %d %v", n, err)
	}
	v, _ := s.VerifyAudit()
	if !v.OK || v.Checked != 6 || v.FirstSeq != 5 {
		t.Fatalf("after prune: %+v", v)
	}
	// Removing the first record after the anchor is still detected.
	tamper(t, s, func(b *bolt.Bucket) { b.Delete(auditKey(5)) })
	if v, _ := s.VerifyAudit(); v.OK || v.BadSeq != 5 {
		t.Fatalf("after removing the anchored record: %+v", v)
	}
	// Pruning everything leaves a verifiable empty chain that later appends extend.
	s2, _, _ := openStore(t)
	s2.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"})
	if n, _ := s2.PruneAudit(context.Background(), t0.Add(time.Hour), 100); n != 1 {
		t.Fatal("prune all")
	}
	s2.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(2 * time.Hour), Method: "/m", Code: "OK"})
	if v, _ := s2.VerifyAudit(); !v.OK || v.FirstSeq != 2 || v.Checked != 1 {
		t.Fatalf("after prune all + append: %+v", v)
	}
}

func TestAuditFailClosed(t *testing.T) {
	s, _, _ := openStore(t)
	s.InjectAuditFailure(errors.New("disk full"))
	err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"})
	if !errors.Is(err, ErrAuditUnavailable) {
		t.Fatalf("got %v, want ErrAuditUnavailable", err)
	}
	s.InjectAuditFailure(nil)
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"}); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.VerifyAudit(); !v.OK || v.Checked != 1 || v.LastSeq != 1 {
		t.Fatalf("a failed append left a trace: %+v", v)
	}
	s.Close()
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"}); !errors.Is(err, ErrAuditUnavailable) {
		t.Fatalf("append after close: %v", err)
	}
}

func TestQueryDigest(t *testing.T) {
	s, _, _ := openStore(t)
	a, b := s.QueryDigest("mcp security"), s.QueryDigest("mcp security")
	if a == "" || a != b || a == s.QueryDigest("other") || strings.Contains(a, "mcp") {
		t.Fatalf("digests: %q %q", a, b)
	}
}

func FuzzDecodeAuditRecord(f *testing.F) {
	f.Add([]byte(`{"seq":1,"time":"2026-11-25T12:00:00Z","method":"/m","code":"OK","prev":null}`))
	f.Add([]byte(`{"seq":0}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		rec, err := DecodeAuditRecord(raw)
		if err == nil && (rec.Seq == 0 || rec.Method == "") {
			t.Fatalf("accepted incomplete record %q", raw)
		}
	})
}

// Deleting the newest records together with the chain head must not pass for a shorter log, and
// brokerd must not start on such a file: it would write new records over the old sequence numbers.
func TestAuditHeadRemovalIsDetected(t *testing.T) {
	for _, tc := range []struct {
		name string
		from uint64 // records from..10 are deleted with the head; 11 deletes only the head
	}{
		{"tail and head removed", 6},
		{"head removed", 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path, kek := openStore(t)
			for i := range 10 {
				if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
			checkpoint(t, s)
			if err := s.db.Update(func(tx *bolt.Tx) error {
				for seq := tc.from; seq <= 10; seq++ {
					if err := tx.Bucket(bucketAudit).Delete(auditKey(seq)); err != nil {
						return err
					}
				}
				return tx.Bucket(bucketMeta).Delete(keyAuditHead)
			}); err != nil {
				t.Fatal(err)
			}
			v, err := s.VerifyAudit()
			if err != nil {
				t.Fatal(err)
			}
			if v.OK || !strings.Contains(v.Problem, "head is missing") {
				t.Fatalf("verify after removing the head: %+v", v)
			}
			s.Close()
			if _, err := Open(path, kek, Options{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "chain head is missing") {
				t.Fatalf("reopen without a chain head: %v, want ErrCorrupt", err)
			}
		})
	}
}

// A new database gets its chain head at once, so an empty log and a deleted one differ.
func TestAuditHeadExistsFromTheStart(t *testing.T) {
	s, _, _ := openStore(t)
	checkpoint(t, s)
	if err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta).Get(keyAuditHead) == nil {
			return errors.New("no chain head in a new database")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 0 {
		t.Fatalf("verify of an empty log: %+v %v", v, err)
	}
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK"}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 1 || v.FirstSeq != 1 {
		t.Fatalf("verify after the first record: %+v %v", v, err)
	}
}

// A minted token and its audit record are one commit: both or neither. A request whose change
// fails (its id is taken) gets its error and no record, and the records queued with it in the same
// batch are committed without it.
func TestPutTokenAudited(t *testing.T) {
	s, _, _ := openStore(t)
	var commits []int // records per commit; set before any append, read after the last
	s.audit.onCommit = func(n int, _ time.Duration, err error) {
		if err == nil {
			commits = append(commits, n)
		}
	}
	ctx := context.Background()
	rec := func(id string) AuditRecord {
		return AuditRecord{Time: t0, Method: "/credbroker.v1.AdminService/MintToken", Code: "OK", TokenID: id, Event: "mint"}
	}
	if err := s.PutTokenAudited(ctx, testToken("aaaaaaaaaaaaaaaa", 0), rec("aaaaaaaaaaaaaaaa")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetToken("aaaaaaaaaaaaaaaa"); err != nil {
		t.Fatalf("minted token: %v", err)
	}

	// Hold the writer inside a transaction (a change that waits), queue three requests behind
	// it, then let it go: the three form the next batch, and the middle one's id is taken.
	release, holding := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- s.appendAudit(ctx, &auditReq{rec: rec("held"), done: make(chan error, 1), apply: func(*bolt.Tx, uint64) error {
			close(holding)
			<-release
			return nil
		}})
	}()
	<-holding
	results := make([]chan error, 3)
	for i, r := range []func() error{
		func() error {
			return s.AppendAudit(ctx, AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: "before"})
		},
		func() error { return s.PutTokenAudited(ctx, testToken("aaaaaaaaaaaaaaaa", 0), rec("duplicate")) },
		func() error {
			return s.AppendAudit(ctx, AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: "after"})
		},
	} {
		results[i] = make(chan error, 1)
		go func() { results[i] <- r() }()
		for len(s.audit.reqs) != i+1 { // queue them in this order
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i, want := range []error{nil, ErrExists, nil} {
		if err := <-results[i]; !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("request %d: %v, want %v", i, err, want)
		}
	}

	s.InjectAuditFailure(errors.New("disk full"))
	if err := s.PutTokenAudited(ctx, testToken("bbbbbbbbbbbbbbbb", 0), rec("bbbbbbbbbbbbbbbb")); !errors.Is(err, ErrAuditUnavailable) {
		t.Fatalf("mint while the audit log fails: %v", err)
	}
	s.InjectAuditFailure(nil)
	if _, err := s.GetToken("bbbbbbbbbbbbbbbb"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a token whose record failed was stored: %v", err)
	}

	recs, err := s.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.TokenID)
	}
	if got, want := strings.Join(ids, ","), "aaaaaaaaaaaaaaaa,held,before,after"; got != want {
		t.Fatalf("records %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(commits), "[1 1 2]"; got != want {
		t.Fatalf("records per commit %s, want %s (the duplicate left out of its batch)", got, want)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 4 {
		t.Fatalf("verify: %+v %v", v, err)
	}
}

// bbolt can report a failed commit whose meta page was already written (the fdatasync after it
// failed), leaving that transaction live. After any failed commit the writer takes the chain head
// from the database, so the next records follow the ones that landed instead of overwriting them.
func TestAuditWriterRereadsHeadAfterAFailedCommit(t *testing.T) {
	s, _, _ := openStore(t)
	appendN(t, s, 3, t0)
	checkpoint(t, s)
	// What the writer believes after a commit of records 2-3 that returned an error but landed.
	// (The writer is idle; these writes happen before the append below hands it work.)
	s.audit.lastSeq, s.audit.lastMAC = 1, []byte("stale")
	s.audit.ckSeq = 1
	s.audit.failing.Store(true)
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "/m", Code: "OK", TokenID: "next"}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != 4 || v.LastSeq != 4 {
		t.Fatalf("verify: %+v %v", v, err)
	}
	if recs, err := s.ListAudit(3, time.Time{}, 10); err != nil || len(recs) != 1 || recs[0].TokenID != "next" {
		t.Fatalf("records after 3: %+v %v", recs, err)
	}
}

// QueryDigest is the audit key's Tink MAC of "query\x00" + q, its last 16 bytes in hex, whichever
// pooled state computes it, from any number of goroutines at once.
func TestQueryDigestMatchesTink(t *testing.T) {
	s, _, _ := openStore(t)
	queries := []string{"", "mcp security", strings.Repeat("long query ", 500), "ünïcode ☃", "mcp security"}
	want := make([]string, len(queries))
	for i, q := range queries {
		tag, err := s.audit.mac.ComputeMAC(append([]byte("query\x00"), q...))
		if err != nil {
			t.Fatal(err)
		}
		want[i] = hex.EncodeToString(tag[len(tag)-16:])
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for n := range 200 {
				i := (g + n) % len(queries)
				if got := s.QueryDigest(queries[i]); got != want[i] {
					t.Errorf("QueryDigest(%.20q) = %s, want %s (Tink's)", queries[i], got, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
}

// A record without a method is refused before it is sealed: readers take one for a damaged record,
// so written into the journal it would make the next start after a crash refuse the database.
func TestAuditRecordWithoutMethodRefused(t *testing.T) {
	s, path, kek := openStore(t)
	appendN(t, s, 2, t0)
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Code: "OK"}); err == nil {
		t.Fatal("a record without a method was appended")
	}
	appendN(t, s, 1, t0.Add(time.Hour))
	// As a crash leaves it: the journal's records not checkpointed into the database.
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	for _, p := range [][2]string{{path, crashed}, {JournalPath(path), JournalPath(crashed)}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s2, err := Open(crashed, kek, Options{})
	if err != nil {
		t.Fatalf("reopening after the refused record: %v", err)
	}
	defer s2.Close()
	if v, err := s2.VerifyAudit(); err != nil || !v.OK || v.Checked != 3 {
		t.Fatalf("verify: %+v %v", v, err)
	}
}

// RevokeTokenAudited commits the revocation with its record, or neither: with the audit log
// failing the token stays live; a token already revoked keeps its first revocation and gets no
// second record; the stamps verify when the database is opened again.
func TestRevokeTokenAudited(t *testing.T) {
	s, path, kek := openStore(t)
	ctx := context.Background()
	const id = "aaaaaaaaaaaaaaaa"
	if err := s.PutToken(testToken(id, 0)); err != nil {
		t.Fatal(err)
	}
	rec := AuditRecord{Time: t0, Method: "event", Code: "OK", TokenID: id, Event: "revoke-process-exit"}
	count := func() int {
		t.Helper()
		recs, err := s.ListAudit(0, time.Time{}, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range recs {
			if r.Event == rec.Event && r.TokenID == id {
				n++
			}
		}
		return n
	}

	s.InjectAuditFailure(errors.New("disk full"))
	if _, _, err := s.RevokeTokenAudited(ctx, id, t0, rec); !errors.Is(err, ErrAuditUnavailable) {
		t.Fatalf("revoke while the audit log fails: %v, want ErrAuditUnavailable", err)
	}
	s.InjectAuditFailure(nil)
	if got, err := s.GetToken(id); err != nil || got.Revoked || count() != 0 {
		t.Fatalf("after a failed commit: revoked=%v err=%v records=%d, want neither written", got.Revoked, err, count())
	}

	got, revoked, err := s.RevokeTokenAudited(ctx, id, t0.Add(time.Minute), rec)
	if err != nil || !revoked || !got.Revoked || !got.RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("revoke: %+v revoked=%v err=%v", got, revoked, err)
	}
	got, revoked, err = s.RevokeTokenAudited(ctx, id, t0.Add(time.Hour), rec)
	if err != nil || revoked || !got.RevokedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("second revoke: %+v revoked=%v err=%v, want the first kept", got, revoked, err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d revocation records, want 1", n)
	}
	if _, _, err := s.RevokeTokenAudited(ctx, "bbbbbbbbbbbbbbbb", t0, rec); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown token: %v", err)
	}

	s.Close()
	s2, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	if got, err := s2.GetToken(id); err != nil || !got.Revoked {
		t.Fatalf("after reopening: revoked=%v err=%v", got.Revoked, err)
	}
	if v, err := s2.VerifyAudit(); err != nil || !v.OK {
		t.Fatalf("verify: %+v %v", v, err)
	}
}
