package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The free page list is written by Close only: a database closed cleanly names its freelist page
// (Open reads it), one copied while open, as a crash leaves it, does not (Open walks the file).
// A damaged copy of the latter is refused with ErrCorrupt, not a panic on bbolt's walking
// goroutine that would kill the process (this test's included).
func TestFreelistSyncedAtCloseAndCrashCopyRefusedWhenDamaged(t *testing.T) {
	kek, _ := newKEK(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	s, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if err := s.AppendAudit(context.Background(), searchAudit(i)); err != nil {
			t.Fatal(err)
		}
	}
	if synced(path) {
		t.Fatal("after commits of an open store the freelist is synced; want NoFreelistSync commits")
	}
	crashed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The records are in the audit journal (journal.go): a crash leaves it beside the file.
	crashedJournal, err := os.ReadFile(JournalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !synced(path) {
		t.Fatal("after Close the freelist is not synced: the next Open would walk the file")
	}

	// The crash copy opens (the walk rebuilds the list) and verifies.
	copyPath := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(copyPath, crashed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(JournalPath(copyPath), crashedJournal, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(copyPath, kek, Options{})
	if err != nil {
		t.Fatalf("open the crash copy: %v", err)
	}
	if v, err := c.VerifyAudit(); err != nil || !v.OK || v.Checked != 300 {
		t.Fatalf("crash copy: %+v %v", v, err)
	}
	c.Close()

	// The crash copy with in-use pages overwritten.
	const page = 4096
	bad := append([]byte{}, crashed...)
	rand.Read(bad[2*page : 6*page])
	badPath := filepath.Join(dir, "damaged.db")
	if err := os.WriteFile(badPath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if synced(badPath) {
		t.Fatal("the damaged crash copy reports a synced freelist: the test would not reach the walk")
	}
	if d, err := Open(badPath, kek, Options{}); !errors.Is(err, ErrCorrupt) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("open a damaged crash copy: %v, want ErrCorrupt", err)
	}
}

// A store opened and closed with nothing committed in between leaves the file as it found it.
func TestOpenCloseWithoutWritesLeavesTheFile(t *testing.T) {
	kek, _ := newKEK(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutToken(testToken("tok", 0)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s, err = Open(path, kek, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetToken("tok"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("opening and closing the store changed the file")
	}
}

// synced reports whether the file at path names a freelist page (readBoltMeta).
func synced(path string) bool {
	m, ok := readBoltMeta(path)
	return !ok || m.synced()
}

// A file shorter than the pages its meta page counts is refused before bbolt reads past its end
// (a fault, not a panic: the process would die), wherever the missing pages lie.
func TestTruncatedFileRefused(t *testing.T) {
	kek, _ := newKEK(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := Open(path, kek, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := s.PutToken(testToken(fmt.Sprintf("tok%05d", i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := readBoltMeta(path)
	if !ok || m.truncated() || m.pages < 8 {
		t.Fatalf("meta of the whole file: %+v ok=%v", m, ok)
	}
	for _, cut := range []int64{int64(m.pages-1) * int64(m.pageSize), int64(len(good)) / 2, 2 * int64(m.pageSize)} {
		if err := os.WriteFile(path, good[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		if d, err := Open(path, kek, Options{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "truncated") {
			if d != nil {
				d.Close()
			}
			t.Fatalf("open the file cut to %d of %d bytes: %v, want ErrCorrupt (truncated)", cut, len(good), err)
		}
	}
}
