package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// otherUID is a uid that is not ours: nobody's. Giving a file to it needs root.
const otherUID = 65534

func chownOrSkip(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another uid needs root")
	}
	if err := os.Lchown(path, otherUID, -1); err != nil {
		t.Fatal(err)
	}
}

// --db: a symbolic link, a non-regular file or another user's file is refused before anything is
// read or changed (the old code chmodded a link's target, then found it was no database).
func TestOpenRefusesUnsafeDBFile(t *testing.T) {
	kek, _ := newKEK(t)
	// A real database, closed, mode loosened: the target a link would point at.
	dir := t.TempDir()
	real := filepath.Join(dir, "real.db")
	s, err := Open(real, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Not a database at all, world-readable: what a link could make brokerd chmod.
	victim := filepath.Join(dir, "victim.txt")
	if err := os.WriteFile(victim, []byte("not a database"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{real, victim} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T) string
		wantErr string
		target  string // a file whose mode must be untouched
	}{
		{"link to a database", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			os.Symlink(real, p)
			return p
		}, "is a symbolic link", real},
		{"link to another file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			os.Symlink(victim, p)
			return p
		}, "is a symbolic link", victim},
		{"dangling link", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			os.Symlink(filepath.Join(dir, "created-through-link.db"), p)
			return p
		}, "is a symbolic link", ""},
		{"directory", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			os.Mkdir(p, 0o700)
			return p
		}, "not a regular file", ""},
		{"fifo", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "not a regular file", ""},
		{"another user's database", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "broker.db")
			b, _ := os.ReadFile(real)
			os.WriteFile(p, b, 0o644)
			chownOrSkip(t, p)
			return p
		}, "is owned by uid 65534", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.setup(t)
			var before os.FileInfo
			if tc.target != "" {
				before, _ = os.Stat(tc.target)
			}
			s, err := Open(p, kek, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded, want refusal", tc.name)
			}
			if !errors.Is(err, ErrFileOwner) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Open = %v, want ErrFileOwner %q", err, tc.wantErr)
			}
			if tc.target != "" {
				after, _ := os.Stat(tc.target)
				if after.Mode() != before.Mode() || after.Size() != before.Size() {
					t.Errorf("refused open changed the link's target: %v %d -> %v %d", before.Mode(), before.Size(), after.Mode(), after.Size())
				}
			}
			if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() != 0o644 {
				t.Errorf("refused open chmodded %s to %v", p, fi.Mode().Perm())
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(dir, "created-through-link.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dangling link's target was created: %v", err)
	}

	// Our own regular file with a loosened mode still opens, and is tightened.
	s, err = Open(real, kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if fi, _ := os.Stat(real); fi.Mode().Perm() != 0o600 {
		t.Errorf("own database left at %v, want 0600", fi.Mode().Perm())
	}
}

// A master keyset owned by another user is refused; ours or root's (systemd's
// $CREDENTIALS_DIRECTORY) is accepted.
func TestMasterKeysetOwner(t *testing.T) {
	_, path := newKEK(t)
	if _, err := LoadMasterKeyset(path); err != nil {
		t.Fatalf("own keyset: %v", err)
	}
	// The owner rule itself, for any uid the test runs as: ours and root's pass, another's not.
	other := uint32(otherUID)
	if os.Geteuid() == otherUID {
		other = 65533
	}
	for _, tc := range []struct {
		uid  uint32
		want bool
	}{{uint32(os.Geteuid()), true}, {0, true}, {other, false}} {
		err := checkSecretOwner("master keyset", path, ownedBy{statOf(t, path), tc.uid})
		if (err == nil) != tc.want {
			t.Errorf("keyset owned by uid %d: %v, want accepted=%v", tc.uid, err, tc.want)
		}
	}
	chownOrSkip(t, path)
	_, err := LoadMasterKeyset(path)
	if !errors.Is(err, ErrFileOwner) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("LoadMasterKeyset(another user's file) = %v, want ErrFileOwner", err)
	}
	if _, err := RotateMasterKeyset(path, filepath.Join(t.TempDir(), "new.json")); !errors.Is(err, ErrFileOwner) {
		t.Fatalf("RotateMasterKeyset(another user's file) = %v, want ErrFileOwner", err)
	}
}

func statOf(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// ownedBy is a FileInfo whose owner is uid.
type ownedBy struct {
	os.FileInfo
	uid uint32
}

func (o ownedBy) Sys() any { return &syscall.Stat_t{Uid: o.uid} }

// A FIFO where a secret file should be is refused as not a regular file, at once: opening one for
// reading would otherwise wait for a writer, and hang brokerd's start or reload.
func TestSecretFileFIFORefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master-keyset")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("no FIFO here: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := ReadSecretFile(path, "the master keyset", 1<<20)
		errc <- err
	}()
	// The bound only turns a hang into a failure; a fixed reader answers at once.
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("got %v, want a refusal naming a non-regular file", err)
		}
	case <-time.After(10 * time.Second):
		// Release the reader (a writer opens the FIFO) so the test ends.
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("ReadSecretFile waits for a writer on a FIFO")
	}
}
