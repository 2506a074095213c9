package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	bolt "go.etcd.io/bbolt"
)

// A rotated master keyset (old key + new primary) opens the database, Rewrap moves the data keyset
// under the new primary, and afterwards the new key alone opens it while the old key alone does
// not. Credentials survive because the data keyset itself never changes.
func TestRotateMasterKeysetAndRewrap(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, onlyNewPath := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json"), filepath.Join(dir, "only-new.json")
	dbPath := filepath.Join(dir, "broker.db")
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
	if _, err := s.PutCredential("scavio_api_key", []byte("sk_test_rewrap"), t0); err != nil {
		t.Fatal(err)
	}

	primary, err := RotateMasterKeyset(oldPath, newPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RotateMasterKeyset(oldPath, newPath); err == nil {
		t.Fatal("RotateMasterKeyset overwrote an existing file")
	}
	if st, err := os.Stat(newPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("rotated keyset: %v mode %v", err, st.Mode())
	}
	rotatedKEK, err := LoadMasterKeyset(newPath)
	if err != nil {
		t.Fatal(err)
	}

	// An unrelated keyset is refused and changes nothing.
	other, _ := newKEK(t)
	before := wrappedBlobs(t, s)
	if err := s.Rewrap(other); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("Rewrap with an unrelated keyset: %v, want ErrWrongMasterKey", err)
	}
	if !bytes.Equal(before, wrappedBlobs(t, s)) {
		t.Fatal("a refused Rewrap changed the stored data keyset")
	}

	if err := s.Rewrap(rotatedKEK); err != nil {
		t.Fatal(err)
	}
	after := wrappedBlobs(t, s)
	if bytes.Equal(before, after) {
		t.Fatal("Rewrap did not rewrite the wrapped keysets")
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Keep only the new primary.
	writeOnlyPrimary(t, newPath, onlyNewPath, primary)
	onlyNew, err := LoadMasterKeyset(onlyNewPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(dbPath, onlyNew, Options{})
	if err != nil {
		t.Fatalf("open with the new key alone after Rewrap: %v", err)
	}
	key, version, err := s.LoadCredential("scavio_api_key")
	if err != nil || string(key) != "sk_test_rewrap" || version != 1 {
		t.Fatalf("credential after Rewrap: %q v%d %v", key, version, err)
	}
	s.Close()
	if _, err := Open(dbPath, oldKEK, Options{}); !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("open with the old key alone after Rewrap: %v, want ErrWrongMasterKey", err)
	}
}

// wrappedBlobs returns the stored encrypted data and audit keysets, concatenated.
func wrappedBlobs(t *testing.T, s *Store) []byte {
	t.Helper()
	var b []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		for _, w := range wrappedKeysets {
			v := tx.Bucket(bucketMeta).Get(w.key)
			if v == nil && w.required {
				t.Fatalf("no %s", w.name)
			}
			b = append(b, v...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeOnlyPrimary writes the keyset at in, minus every key but primary, to out.
func writeOnlyPrimary(t *testing.T, in, out string, primary uint32) {
	t.Helper()
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		t.Fatal(err)
	}
	m := keyset.NewManagerFromHandle(h)
	for _, k := range insecurecleartextkeyset.KeysetMaterial(h).GetKey() {
		if k.GetKeyId() != primary {
			if err := m.Delete(k.GetKeyId()); err != nil {
				t.Fatal(err)
			}
		}
	}
	h, err = m.Handle()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeKeysetFile(out, h); err != nil {
		t.Fatal(err)
	}
}
