package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// mountSmallTmpfs mounts a tmpfs of size at a new directory and returns it, or skips the test
// saying why it cannot (it needs root, as cmd/brokerd's disk-full tests do).
func mountSmallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		if err := exec.Command("umount", dir).Run(); err != nil {
			exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// fillUp writes a file in dir until the file system is full and returns its path.
func fillUp(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	for { // the last partial blocks
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return path
}

// Records the audit journal took while the disk was full (it is preallocated, so searches are
// still audited) cannot be moved into the database until space returns. brokerd stopping then
// (SIGTERM: Close's checkpoint fails too; or kill -9) must still start again on the full disk, as
// RELIABILITY.md says it does: the records stay durable in the journal, the log reports itself
// failing, and the first commit after space returns moves them into the database. Before, Open
// refused ("replaying N records of the audit journal: … no space left on device").
func TestJournalRecordsSurviveRestartOnFullDisk(t *testing.T) {
	dir := mountSmallTmpfs(t, "3m")
	kek, _ := newKEK(t)
	path := filepath.Join(dir, "broker.db")
	opts := Options{AuditCheckpointInterval: time.Hour}
	s, err := Open(path, kek, opts)
	if err != nil {
		t.Fatal(err)
	}
	mintAudited(t, s, testToken("tokA", 0)) // record 1, in the database with its token
	filler := fillUp(t, dir)
	const n = 300
	for i := range n {
		if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "search", Code: "OK", TokenID: "tokA"}); err != nil {
			t.Fatalf("append %d to the journal on a full disk: %v", i, err)
		}
	}
	if err := s.CheckpointAudit(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("checkpoint on a full disk: got %v, want ENOSPC (the test needs the database unable to grow)", err)
	}
	s.Close()

	s, err = Open(path, kek, opts)
	if err != nil {
		t.Fatalf("restart on the full disk: %v", err)
	}
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != n+1 {
		t.Fatalf("VerifyAudit on the full disk: %+v %v, want %d records", v, err, n+1)
	}
	if err := s.AuditHealthy(); !errors.Is(err, ErrAuditUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("AuditHealthy on the full disk: %v, want unavailable (no space)", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.AuditHealthy(); err != nil {
		t.Fatalf("AuditHealthy once space returned: %v", err)
	}
	if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0, Method: "search", Code: "OK", TokenID: "tokA"}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path, kek, Options{NoJournal: true}) // the database alone holds every record
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.VerifyAudit(); err != nil || !v.OK || v.Checked != n+2 {
		t.Fatalf("VerifyAudit of the database alone: %+v %v, want %d records", v, err, n+2)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}
