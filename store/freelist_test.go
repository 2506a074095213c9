package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
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
	if freelistSynced(path) {
		t.Fatal("after commits of an open store the freelist is synced; want NoFreelistSync commits")
	}
	crashed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !freelistSynced(path) {
		t.Fatal("after Close the freelist is not synced: the next Open would walk the file")
	}

	// The crash copy opens (the walk rebuilds the list) and verifies.
	copyPath := filepath.Join(dir, "crashed.db")
	if err := os.WriteFile(copyPath, crashed, 0o600); err != nil {
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
	if freelistSynced(badPath) {
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
