package store

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/tink"
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
