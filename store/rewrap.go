package store

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// wrappedKeysets lists every keyset stored in meta encrypted under the master keyset, with the
// associated data it is bound to. Rewrap must move all of them, or a database would need two
// master keys to open: a keyset added under the KEK must be added here too.
var wrappedKeysets = []struct {
	name     string
	key, aad []byte
	required bool
}{
	{"data keyset", keyDataKeyset, dataKeysetAAD, true},
	{"audit keyset", keyAuditKeyset, auditKeysetAAD, false},
	// Absent only in a schema-1 database (before record MACs), which InspectKeys may look at.
	{"record keyset", keyRecordKeyset, recordKeysetAAD, false},
}

// Rewrap re-encrypts the keysets stored under the master keyset (the data keyset, the audit MAC
// keyset and the record MAC keyset) under kek's primary key, in one transaction. kek must decrypt every one of them (a
// rotated master keyset keeps the old key next to a new primary), or Rewrap returns
// ErrWrongMasterKey and changes nothing. The wrapped keysets themselves, and so every stored
// credential and audit MAC, are unchanged: only their wrapping moves to the new key, after which
// the old master key is no longer needed for this database.
func (s *Store) Rewrap(kek tink.AEAD) error {
	if kek == nil {
		return errors.New("rewrap: no master keyset")
	}
	return s.update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return fmt.Errorf("%w: no meta bucket", ErrCorrupt)
		}
		rewrapped := make([][]byte, len(wrappedKeysets))
		for i, w := range wrappedKeysets {
			encrypted := m.Get(w.key)
			if encrypted == nil {
				if w.required {
					return fmt.Errorf("%w: no %s", ErrCorrupt, w.name)
				}
				continue
			}
			h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(encrypted)), kek, w.aad)
			if err != nil {
				return ErrWrongMasterKey
			}
			var buf bytes.Buffer
			if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, w.aad); err != nil {
				return fmt.Errorf("encrypt %s: %w", w.name, err)
			}
			rewrapped[i] = buf.Bytes()
		}
		// Write only once every keyset decrypted, so a refusal leaves meta as it was even before
		// bbolt rolls the transaction back.
		for i, w := range wrappedKeysets {
			if rewrapped[i] != nil {
				if err := m.Put(w.key, rewrapped[i]); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
