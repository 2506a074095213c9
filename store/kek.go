package store

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"
)

// This file lets the master key (the KEK) live somewhere other than a keyset file, e.g. in a KMS,
// without the store knowing anything about it: a KEK is any tink.AEAD, and the store only records
// a description of it (the source) and hands out the KEK's raw ciphertexts so the caller can read
// which KMS key version made them. It holds no HTTP or KMS code.

// keyKEKSource, in meta, describes the KEK the wrapped keysets are under: "file" (a Tink keyset
// file, the default of every database written before it existed) or a KMS key URI. It is a label
// for error messages ("start with --master-key-uri X"), never a secret and never trusted for
// access: a wrong KEK still fails to decrypt.
var keyKEKSource = []byte("kek_source")

// KEKSourceFile is the recorded source of a database wrapped under a master keyset file.
const KEKSourceFile = "file"

// KEKSource returns the recorded source of the KEK the database is wrapped under (KEKSourceFile
// when none was recorded).
func (s *Store) KEKSource() string {
	var src string
	s.db.View(func(tx *bolt.Tx) error {
		src = string(tx.Bucket(bucketMeta).Get(keyKEKSource))
		return nil
	})
	if src == "" {
		return KEKSourceFile
	}
	return src
}

// InspectKEKSource reads the recorded KEK source of the database at path without any key (so
// brokerd can say what to start with after the KEK it was given did not open it). It fails with
// ErrLocked while another process holds the database.
func InspectKEKSource(path string) (string, error) {
	// openDBFile as in Open: no symlink, this uid's or root's file only.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 100 * time.Millisecond, OpenFile: openDBFile})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return "", fmt.Errorf("open database %s: %w", path, ErrLocked)
		}
		return "", fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	src := ""
	db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(bucketMeta); m != nil {
			src = string(m.Get(keyKEKSource))
		}
		return nil
	})
	if src == "" {
		src = KEKSourceFile
	}
	return src, nil
}

// WrappedCiphertexts returns the KEK's ciphertexts of the keysets stored under it (the
// encrypted_keyset field of each stored Tink EncryptedKeyset), in a fixed order. They are public
// (ciphertext) and let a caller read the KMS key version that made them: a KMS whose ciphertexts
// carry no Tink key-id prefix (Vault Transit's "vault:vN:...") is invisible to RewrapIfNeeded.
func (s *Store) WrappedCiphertexts() ([][]byte, error) {
	var out [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		for _, w := range wrappedKeysets {
			blob := m.Get(w.key)
			if blob == nil {
				continue
			}
			var ek tinkpb.EncryptedKeyset
			if err := proto.Unmarshal(blob, &ek); err != nil {
				return fmt.Errorf("%w: stored %s is not a Tink EncryptedKeyset", ErrCorrupt, w.name)
			}
			out = append(out, bytes.Clone(ek.GetEncryptedKeyset()))
		}
		return nil
	})
	return out, err
}

// RewrapUnder re-wraps every keyset stored under the master key from the KEK the store holds now
// to next, in one transaction, and records source as the database's KEK source. Before the
// transaction commits, each re-wrapped keyset is decrypted again with next and compared with the
// one it replaces (verification: a KEK that encrypts but cannot decrypt, or a KMS that answers
// wrongly, leaves the database as it was). It is atomic, so an interruption leaves the database
// wholly under the old KEK or wholly under next, and running it again is safe: re-wrapping under
// the KEK it is already under only refreshes the wrapping (e.g. onto a newer KMS key version).
// From then on the store uses next (Rekey, Keys).
//
// It reaches the KMS of both KEKs (decrypting with the old, encrypting and decrypting with next)
// before the write transaction starts, so a slow KMS holds no database lock.
func (s *Store) RewrapUnder(next tink.AEAD, source string) error {
	if next == nil {
		return errors.New("re-wrap: no master key")
	}
	if source == "" {
		source = KEKSourceFile
	}
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	cur := s.keys.masterKey()
	var stored [][]byte
	curSource := KEKSourceFile
	if err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return fmt.Errorf("%w: no meta bucket", ErrCorrupt)
		}
		if src := m.Get(keyKEKSource); len(src) > 0 {
			curSource = string(src)
		}
		stored = make([][]byte, len(wrappedKeysets))
		for i, w := range wrappedKeysets {
			stored[i] = bytes.Clone(m.Get(w.key))
			if stored[i] == nil && w.required {
				return fmt.Errorf("%w: no %s", ErrCorrupt, w.name)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	rewrapped := make([][]byte, len(wrappedKeysets))
	var newInfo *dataKeysetInfo
	for i, w := range wrappedKeysets {
		if stored[i] == nil {
			continue
		}
		h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(stored[i])), cur, w.aad)
		if err != nil {
			return fmt.Errorf("re-wrap: the %s does not decrypt under the current master key (is its KMS reachable?): %w", w.name, ErrWrongMasterKey)
		}
		var buf bytes.Buffer
		if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), next, w.aad); err != nil {
			return fmt.Errorf("re-wrap: encrypt the %s under the new master key: %w", w.name, err)
		}
		// Verify: the new wrapping opens with next to the very same keyset.
		back, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), next, w.aad)
		if err != nil {
			return fmt.Errorf("re-wrap: the %s wrapped under the new master key does not decrypt with it; nothing was changed: %w", w.name, err)
		}
		if !sameKeyset(h, back) {
			return fmt.Errorf("re-wrap: the %s wrapped under the new master key decrypts to a different keyset; nothing was changed", w.name)
		}
		rewrapped[i] = buf.Bytes()
		if bytes.Equal(w.key, keyDataKeyset) {
			newInfo = &dataKeysetInfo{blob: rewrapped[i], info: h.KeysetInfo()}
		}
	}
	// Publish the new blob's key list before the commit: a concurrent Keys (Status) that reads the
	// new wrapping then needs no KEK, while one that reads the old one still opens it with the
	// old KEK, which stays in place until the commit.
	if newInfo != nil {
		s.keys.info.Store(newInfo)
	}
	err := s.update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		for i, w := range wrappedKeysets {
			// A Rekey or another re-wrap cannot run meanwhile (keys.mu), but say so if the
			// file changed under us rather than overwrite what we did not read.
			if !bytes.Equal(m.Get(w.key), stored[i]) {
				return fmt.Errorf("re-wrap: the %s changed meanwhile; run it again", w.name)
			}
			if rewrapped[i] != nil {
				if err := m.Put(w.key, rewrapped[i]); err != nil {
					return err
				}
			}
		}
		return m.Put(keyKEKSource, []byte(source))
	})
	if errors.Is(err, ErrOutcomeUnknown) {
		// The commit failed and the database could not be read to tell whether it landed (the
		// store now takes no more writes, and the daemon restarts): it is under one KEK or the
		// other, so the store opens its keysets with either until then, and the operator learns
		// that the restart may need the new one.
		s.keys.kek.Store(&aeadBox{a: eitherKEK{next: next, cur: cur}})
		return fmt.Errorf("re-wrap: %w: the database may now be under the new master key (%s) or still under the old one (%s): "+
			"restart brokerd with the new one, and if it refuses (naming the key the database is under), with the old one",
			err, DescribeKEKSource(source), DescribeKEKSource(curSource))
	}
	if err != nil {
		// Nothing landed (the commit guard read the database to know): still under the old KEK.
		return err
	}
	// Committed, or landed although its commit failed (the guard answers nil and stops writes):
	// the database is under next either way.
	s.keys.kek.Store(&aeadBox{a: next})
	return nil
}

// DescribeKEKSource names a recorded KEK source (KEKSource) for a message.
func DescribeKEKSource(src string) string {
	if src == KEKSourceFile {
		return "a master keyset file"
	}
	return src
}

// eitherKEK opens what either of two KEKs wrapped: the store's KEK after a re-wrap whose outcome
// is unknown, when the database holds one wrapping or the other. It encrypts under next, the KEK
// the re-wrap was moving to (the store takes no writes by then anyway).
type eitherKEK struct{ next, cur tink.AEAD }

func (e eitherKEK) Encrypt(pt, ad []byte) ([]byte, error) { return e.next.Encrypt(pt, ad) }

func (e eitherKEK) Decrypt(ct, ad []byte) ([]byte, error) {
	pt, err := e.next.Decrypt(ct, ad)
	if err != nil {
		pt, err = e.cur.Decrypt(ct, ad)
	}
	return pt, err
}

// sameKeyset compares two keyset handles' key ids and primary (their key material cannot be read
// without the insecure API, and a different keyset under the same AAD would not share the ids).
func sameKeyset(a, b *keyset.Handle) bool {
	ia, ib := a.KeysetInfo(), b.KeysetInfo()
	return proto.Equal(ia, ib)
}
