package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Credential is a credential's metadata. It never holds the value.
type Credential struct {
	Name      string
	Version   uint64    // current version
	CreatedAt time.Time // when version 1 was stored
	RotatedAt time.Time // when the current version was stored
}

// credentialRecord is the JSON under credentials/<name>/meta.
type credentialRecord struct {
	Current   uint64    `json:"current"`
	CreatedAt time.Time `json:"created_at"`
	RotatedAt time.Time `json:"rotated_at"`
}

// versionRecord is the JSON under credentials/<name>/versions/<version>.
type versionRecord struct {
	CreatedAt  time.Time `json:"created_at"`
	Ciphertext []byte    `json:"ciphertext"`
}

// credentialAAD names a ciphertext's slot, so a version moved to another name or number fails to
// decrypt instead of silently serving the wrong key.
func credentialAAD(name string, version uint64) []byte {
	return fmt.Appendf(nil, "credential/%s/%d", name, version)
}

func versionKey(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// PutCredential stores a new credential as version 1. ErrExists if the name is taken.
func (s *Store) PutCredential(name string, value []byte, now time.Time) (Credential, error) {
	var out Credential
	err := s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketCredentials)
		if root.Bucket([]byte(name)) != nil {
			return fmt.Errorf("credential %q: %w", name, ErrExists)
		}
		b, err := root.CreateBucket([]byte(name))
		if err != nil {
			return err
		}
		if _, err := b.CreateBucket(bucketVersions); err != nil {
			return err
		}
		rec := credentialRecord{CreatedAt: now.UTC(), RotatedAt: now.UTC()}
		out, err = s.addVersion(b, name, rec, value, now)
		return err
	})
	return out, err
}

// RotateCredential stores value as the next version of an existing credential and makes it
// current in the same transaction: a reader sees either the old or the new version, never neither.
func (s *Store) RotateCredential(name string, value []byte, now time.Time) (Credential, error) {
	var out Credential
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials).Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("credential %q: %w", name, ErrNotFound)
		}
		rec, err := readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		out, err = s.addVersion(b, name, rec, value, now)
		return err
	})
	return out, err
}

// addVersion encrypts value as version rec.Current+1 of name, makes it current and prunes versions
// beyond keepVersions.
func (s *Store) addVersion(b *bolt.Bucket, name string, rec credentialRecord, value []byte, now time.Time) (Credential, error) {
	next := rec.Current + 1
	ct, err := s.data.Encrypt(value, credentialAAD(name, next))
	if err != nil {
		return Credential{}, fmt.Errorf("credential %q: encrypt: %w", name, err)
	}
	vrec, err := json.Marshal(versionRecord{CreatedAt: now.UTC(), Ciphertext: ct})
	if err != nil {
		return Credential{}, err
	}
	versions := b.Bucket(bucketVersions)
	if err := versions.Put(versionKey(next), vrec); err != nil {
		return Credential{}, err
	}
	rec.Current = next
	rec.RotatedAt = now.UTC()
	meta, err := json.Marshal(rec)
	if err != nil {
		return Credential{}, err
	}
	if err := b.Put(keyCredMeta, meta); err != nil {
		return Credential{}, err
	}
	// Prune the oldest versions; deleting while iterating a cursor skips keys, so collect first.
	var keys [][]byte
	c := versions.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	var old [][]byte
	if len(keys) > s.keepVersions {
		old = keys[:len(keys)-s.keepVersions]
	}
	for _, k := range old {
		if err := versions.Delete(k); err != nil {
			return Credential{}, err
		}
	}
	return Credential{Name: name, Version: next, CreatedAt: rec.CreatedAt, RotatedAt: rec.RotatedAt}, nil
}

func readCredentialRecord(b *bolt.Bucket, name string) (credentialRecord, error) {
	var rec credentialRecord
	raw := b.Get(keyCredMeta)
	if raw == nil {
		return rec, fmt.Errorf("credential %q: %w: no metadata", name, ErrCorrupt)
	}
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Current == 0 {
		return rec, fmt.Errorf("credential %q: %w: bad metadata", name, ErrCorrupt)
	}
	return rec, nil
}

// ListCredentials returns every credential's metadata sorted by name.
func (s *Store) ListCredentials() ([]Credential, error) {
	var out []Credential
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCredentials).ForEachBucket(func(k []byte) error {
			name := string(k)
			rec, err := readCredentialRecord(tx.Bucket(bucketCredentials).Bucket(k), name)
			if err != nil {
				return err
			}
			out = append(out, Credential{Name: name, Version: rec.Current, CreatedAt: rec.CreatedAt, RotatedAt: rec.RotatedAt})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// DeleteCredential removes a credential and every version of it. ErrNotFound if absent.
func (s *Store) DeleteCredential(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketCredentials)
		if root.Bucket([]byte(name)) == nil {
			return fmt.Errorf("credential %q: %w", name, ErrNotFound)
		}
		return root.DeleteBucket([]byte(name))
	})
}

// LoadCredential decrypts the current version of name. The caller owns the returned slice and
// should zero it when done; nothing else keeps the plaintext.
func (s *Store) LoadCredential(name string) (value []byte, version uint64, err error) {
	var ct []byte
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials).Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("credential %q: %w", name, ErrNotFound)
		}
		rec, err := readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		version = rec.Current
		raw := b.Bucket(bucketVersions).Get(versionKey(version))
		if raw == nil {
			return fmt.Errorf("credential %q version %d: %w: missing", name, version, ErrCorrupt)
		}
		var vrec versionRecord
		if err := json.Unmarshal(raw, &vrec); err != nil {
			return fmt.Errorf("credential %q version %d: %w", name, version, ErrCorrupt)
		}
		ct = vrec.Ciphertext // json decoding copied it out of the mmap
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	value, err = s.data.Decrypt(ct, credentialAAD(name, version))
	if err != nil {
		return nil, 0, fmt.Errorf("credential %q version %d: %w: does not decrypt under the data keyset", name, version, ErrCorrupt)
	}
	return value, version, nil
}

// CountCredentials returns how many credentials are stored.
func (s *Store) CountCredentials() (int, error) {
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCredentials).ForEachBucket(func([]byte) error { n++; return nil })
	})
	return n, err
}
