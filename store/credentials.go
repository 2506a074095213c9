package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Credential is a credential's metadata. It never holds the value.
type Credential struct {
	Name      string
	Version   uint64    // current version
	CreatedAt time.Time // when version 1 was stored
	RotatedAt time.Time // when the current version became current
	Previous  uint64    // the version current before Version, 0 if none is kept (versions.go)
	Pending   uint64    // a staged version awaiting verification, 0 if none
	Policy    *Policy   // rotation policy, nil if none (policy.go)
	Limits    *Limits   // spending limits, nil if none (limits.go)
	// CreditsThisMonth counted against Limits.MonthlyCredits (limits.go).
	CreditsThisMonth uint64
}

// credentialRecord is the JSON under credentials/<name>/meta. Fields after RotatedAt were added
// without a schema bump: their zero values describe a database written before them.
type credentialRecord struct {
	Current   uint64    `json:"current"`
	CreatedAt time.Time `json:"created_at"`
	RotatedAt time.Time `json:"rotated_at"`
	Previous  uint64    `json:"previous,omitempty"`
	Pending   uint64    `json:"pending,omitempty"`
	Last      uint64    `json:"last,omitempty"` // highest version number ever used; never reused
	// PolicyTag and LimitsTag bind the credential's policy and limits records to this one: the
	// first bytes of their MAC tags, nil when there is none (records.go, bindings). A policy or
	// limits record removed, added or put back to an earlier value no longer matches.
	PolicyTag []byte `json:"policy_tag,omitempty"`
	LimitsTag []byte `json:"limits_tag,omitempty"`
}

// versionRecord is the JSON under credentials/<name>/versions/<version>. Fields after Ciphertext
// were added without a schema bump (see Version for their meaning).
type versionRecord struct {
	CreatedAt    time.Time    `json:"created_at"`
	Ciphertext   []byte       `json:"ciphertext"`
	CreatedByUID *uint32      `json:"created_by_uid,omitempty"`
	How          How          `json:"how,omitempty"`
	Verified     bool         `json:"verified,omitempty"`
	State        VersionState `json:"state,omitempty"`
	From         uint64       `json:"from,omitempty"`
}

// credentialAAD names a ciphertext's slot, so a version moved to another name or number fails to
// decrypt instead of silently serving the wrong key.
func credentialAAD(name string, version uint64) []byte {
	// "credential/<name>/<version>", built without fmt: this runs on every upstream call.
	b := make([]byte, 0, len("credential/")+len(name)+1+20)
	b = append(append(append(b, "credential/"...), name...), '/')
	return strconv.AppendUint(b, version, 10)
}

func versionKey(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// PutCredential stores a new credential as version 1 (how=manual, creator unknown); see
// CreateCredential. ErrExists if the name is taken.
func (s *Store) PutCredential(name string, value []byte, now time.Time) (Credential, error) {
	return s.CreateCredential(name, value, VersionMeta{At: now, How: HowManual})
}

// RotateCredential stores value as the next version of an existing credential and makes it
// current in the same transaction: a reader sees either the old or the new version, never neither.
// See AddVersion.
func (s *Store) RotateCredential(name string, value []byte, now time.Time) (Credential, error) {
	return s.AddVersion(name, value, VersionMeta{At: now, How: HowManual})
}

func (s *Store) readCredentialRecord(b *bolt.Bucket, name string) (credentialRecord, error) {
	var rec credentialRecord
	raw, err := s.getRecord(b, credentialSlot(name), keyCredMeta)
	if err != nil {
		return rec, err
	}
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
			c, err := s.readCredential(tx.Bucket(bucketCredentials).Bucket(k), string(k))
			if err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// DeleteCredential removes a credential and every version of it. ErrNotFound if absent.
func (s *Store) DeleteCredential(name string) error {
	return s.update(func(tx *bolt.Tx) error {
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
	gen := s.writeGen.Load()
	if c, ok := s.current.Load(name); ok && c.(*currentVersion).gen == gen {
		cv := c.(*currentVersion)
		return s.decryptVersion(name, cv.version, cv.ciphertext)
	}
	var ct []byte
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials).Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("credential %q: %w", name, ErrNotFound)
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		version = rec.Current
		vrec, err := s.readVersionRecord(b.Bucket(bucketVersions), name, version)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("credential %q version %d: %w: missing", name, version, ErrCorrupt)
		}
		if err != nil {
			return err
		}
		ct = vrec.Ciphertext // json decoding copied it out of the mmap
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	value, version, err = s.decryptVersion(name, version, ct)
	if err == nil {
		// Stamped with the generation read before the transaction: if a write committed since,
		// the entry is already stale and the next call reads again.
		s.current.Store(name, &currentVersion{gen: gen, version: version, ciphertext: ct})
	}
	return value, version, err
}

func (s *Store) decryptVersion(name string, version uint64, ct []byte) ([]byte, uint64, error) {
	value, err := s.data.Decrypt(ct, credentialAAD(name, version))
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
