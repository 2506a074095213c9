package store

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// failingAEAD is a KEK whose KMS can be switched off (an outage) or that returns a corrupted
// ciphertext (a KMS answering wrongly).
type failingAEAD struct {
	tink.AEAD
	down, garble atomic.Bool
}

var errKMSDown = errors.New("kms unreachable")

func (f *failingAEAD) Encrypt(pt, ad []byte) ([]byte, error) {
	if f.down.Load() {
		return nil, errKMSDown
	}
	ct, err := f.AEAD.Encrypt(pt, ad)
	if err == nil && f.garble.Load() {
		ct[len(ct)-1] ^= 1
	}
	return ct, err
}

func (f *failingAEAD) Decrypt(ct, ad []byte) ([]byte, error) {
	if f.down.Load() {
		return nil, errKMSDown
	}
	return f.AEAD.Decrypt(ct, ad)
}

// RewrapUnder moves a database from one KEK to an unrelated one and records the source: afterwards
// the new KEK alone opens it, the old one does not, the credential survives, and the recorded
// source names the new KEK. A KEK that cannot decrypt what it encrypted is refused with nothing
// changed.
func TestRewrapUnderMovesToAnotherKEK(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "broker.db")
	fileKEK, _ := newKEK(t)
	inner, _ := newKEK(t)
	kms := &failingAEAD{AEAD: inner}
	s, err := Open(dbPath, fileKEK, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutCredential("scavio_api_key", []byte("sk_test_migrate"), t0); err != nil {
		t.Fatal(err)
	}
	if got := s.KEKSource(); got != KEKSourceFile {
		t.Fatalf("new database's source %q, want %q", got, KEKSourceFile)
	}

	before := wrappedBlobs(t, s)
	kms.garble.Store(true)
	if err := s.RewrapUnder(kms, "hcvault://kms.example:8200/transit/keys/k"); err == nil {
		t.Fatal("RewrapUnder accepted a KEK whose ciphertexts do not decrypt")
	}
	if !bytes.Equal(before, wrappedBlobs(t, s)) || s.KEKSource() != KEKSourceFile {
		t.Fatal("a refused RewrapUnder changed the database")
	}
	kms.garble.Store(false)
	kms.down.Store(true)
	if err := s.RewrapUnder(kms, "hcvault://kms.example:8200/transit/keys/k"); err == nil || !strings.Contains(err.Error(), errKMSDown.Error()) {
		t.Fatalf("RewrapUnder with the new KMS down: %v, want its error", err)
	}
	kms.down.Store(false)

	const uri = "hcvault://kms.example:8200/transit/keys/k"
	if err := s.RewrapUnder(kms, uri); err != nil {
		t.Fatal(err)
	}
	if got := s.KEKSource(); got != uri {
		t.Fatalf("source after migrate %q, want %q", got, uri)
	}
	cts, err := s.WrappedCiphertexts()
	if err != nil || len(cts) != 3 {
		t.Fatalf("WrappedCiphertexts: %d, %v; want 3", len(cts), err)
	}
	// The KMS is needed at start and on re-wrap only: with it down, status (Keys) and reading a
	// credential still work.
	kms.down.Store(true)
	if _, err := s.Keys(); err != nil {
		t.Fatalf("Keys with the KMS down after a re-wrap: %v", err)
	}
	if v, _, err := s.LoadCredential("scavio_api_key"); err != nil || string(v) != "sk_test_migrate" {
		t.Fatalf("LoadCredential with the KMS down: %q, %v", v, err)
	}
	kms.down.Store(false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := Open(dbPath, fileKEK, Options{}); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("old file KEK after migrate: %v, want ErrWrongMasterKey", err)
	}
	if src, err := InspectKEKSource(dbPath); err != nil || src != uri {
		t.Fatalf("InspectKEKSource: %q, %v", src, err)
	}
	s, err = Open(dbPath, kms, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Down right after start, before anything asked for the keys: status still answers.
	kms.down.Store(true)
	if _, err := s.Keys(); err != nil {
		t.Fatalf("Keys with the KMS down right after Open: %v", err)
	}
	kms.down.Store(false)
	// And back to the file: resumable in the sense that running it twice is harmless.
	for range 2 {
		if err := s.RewrapUnder(fileKEK, KEKSourceFile); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = Open(dbPath, fileKEK, Options{})
	if err != nil {
		t.Fatalf("file KEK after migrating back: %v", err)
	}
	defer s.Close()
	if v, _, err := s.LoadCredential("scavio_api_key"); err != nil || string(v) != "sk_test_migrate" {
		t.Fatalf("credential after two migrations: %q, %v", v, err)
	}
	if s.KEKSource() != KEKSourceFile {
		t.Fatalf("source %q after migrating back", s.KEKSource())
	}
}

// kekOpensStored reports whether the store's in-memory KEK opens the data keyset the database
// holds now (the two agree, whatever a failed commit did).
func kekOpensStored(t *testing.T, s *Store) bool {
	t.Helper()
	var blob []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		blob = bytes.Clone(tx.Bucket(bucketMeta).Get(keyDataKeyset))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(blob)), s.keys.masterKey(), dataKeysetAAD)
	return err == nil
}

// RewrapUnder's commit fails (the commit guard's fault injection, as a failing fdatasync would):
// whether it landed or not, and whether the guard could tell, the store's in-memory KEK opens what
// the database holds, and an outcome it cannot tell is ErrOutcomeUnknown saying the database may
// now be under the new key, which to restart with. The database then opens with the KEK the
// outcome says.
func TestRewrapUnderAfterAFailedCommit(t *testing.T) {
	const uri = "hcvault://kms.example:8200/transit/keys/k"
	for _, tc := range []struct {
		name                string
		fault               commitFault
		wantErr, wantUnsure bool
		underNew            bool // what the database is under afterwards
	}{
		{"failed, did not land", commitFault{}, true, false, false},
		{"failed, landed", commitFault{landed: true}, false, false, true},
		{"failed, landed, unreadable", commitFault{landed: true, unreadable: true}, true, true, true},
		{"failed, did not land, unreadable", commitFault{unreadable: true}, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dbPath := filepath.Join(t.TempDir(), "broker.db")
			oldKEK, _ := newKEK(t)
			newKEK, _ := newKEK(t)
			s, err := Open(dbPath, oldKEK, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.PutCredential("scavio_api_key", []byte("sk_test_landed"), t0); err != nil {
				t.Fatal(err)
			}
			f := tc.fault
			s.guard.fault.Store(&f)
			err = s.RewrapUnder(newKEK, uri)
			if (err != nil) != tc.wantErr || errors.Is(err, ErrOutcomeUnknown) != tc.wantUnsure {
				t.Fatalf("RewrapUnder: %v; want error %v, outcome unknown %v", err, tc.wantErr, tc.wantUnsure)
			}
			if tc.wantUnsure {
				for _, want := range []string{"may now be under the new master key (" + uri + ")", "still under the old one (a master keyset file)", "restart brokerd with the new one"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("the error does not say %q: %v", want, err)
					}
				}
			}
			if !kekOpensStored(t, s) {
				t.Fatal("the store's master key does not open the keysets the database holds")
			}
			if v, _, err := s.LoadCredential("scavio_api_key"); err != nil || string(v) != "sk_test_landed" {
				t.Fatalf("credential after the failed commit: %q %v", v, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			right, wrong := oldKEK, newKEK
			if tc.underNew {
				right, wrong = newKEK, oldKEK
			}
			if _, err := Open(dbPath, wrong, Options{}); !errors.Is(err, ErrWrongMasterKey) {
				t.Fatalf("reopened with the KEK the database is not under: %v, want ErrWrongMasterKey", err)
			}
			s2, err := Open(dbPath, right, Options{})
			if err != nil {
				t.Fatalf("reopened with the KEK the database is under: %v", err)
			}
			s2.Close()
		})
	}
}

// The same for a rotated master keyset (RewrapIfNeeded): it opens both wrappings, so after a
// re-wrap of unknown outcome the store keeps it (not the keyset before the rotation), and the
// error says to restart with it.
func TestRewrapIfNeededOutcomeUnknown(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, dbPath := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json"), filepath.Join(dir, "broker.db")
	if err := NewMasterKeyset(oldPath); err != nil {
		t.Fatal(err)
	}
	oldKEK, err := LoadMasterKeyset(oldPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dbPath, oldKEK, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := RotateMasterKeyset(oldPath, newPath); err != nil {
		t.Fatal(err)
	}
	rotated, err := LoadMasterKeyset(newPath)
	if err != nil {
		t.Fatal(err)
	}
	s.guard.fault.Store(&commitFault{landed: true, unreadable: true})
	_, rewrapped, err := s.RewrapIfNeeded(rotated)
	if !errors.Is(err, ErrOutcomeUnknown) || rewrapped || !strings.Contains(err.Error(), "restart brokerd with this master keyset") {
		t.Fatalf("RewrapIfNeeded: %v (rewrapped %v); want ErrOutcomeUnknown naming the keyset to restart with", err, rewrapped)
	}
	if s.keys.masterKey() != rotated || !kekOpensStored(t, s) {
		t.Fatal("after a re-wrap of unknown outcome the store is not on the rotated keyset, which opens either wrapping")
	}
}
