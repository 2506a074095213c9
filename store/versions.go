package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// How says how a credential version came to be.
type How string

const (
	HowManual    How = "manual"    // put or rotate by an operator
	HowScheduled How = "scheduled" // rotated by brokerd's scheduler running the policy's command
	HowImport    How = "import"    // imported from another store (brokerctl import)
	HowRollback  How = "rollback"  // a copy of an earlier version's value (brokerctl credential rollback)
)

// VersionState is a version's place in the credential's life.
type VersionState string

const (
	StatePending  VersionState = "pending"  // staged, waiting for the upstream to accept it; never served
	StateCurrent  VersionState = "current"  // served by every call that starts now
	StatePrevious VersionState = "previous" // kept for rollback and the grace fallback
)

// VersionMeta describes who made a version, when and how.
type VersionMeta struct {
	At       time.Time
	ByUID    *uint32 // nil when unknown
	How      How     // "" means HowManual
	Verified bool    // the upstream accepted the value before it became current
}

// Version is one stored version's metadata. It never holds the value.
type Version struct {
	Version      uint64
	CreatedAt    time.Time
	CreatedByUID *uint32 // nil when unknown (versions written before this field existed)
	How          How
	Verified     bool
	State        VersionState
	// From is, for a rollback, the version whose value this one copies.
	From uint64
	// KeyID is the id of the data key that encrypts this version (0 if the ciphertext has no Tink
	// key-id prefix). Rekey moves every version to the data keyset's primary key.
	KeyID uint32
}

// keyIDOf returns the Tink key id in a ciphertext's 5-byte prefix (TINK or LEGACY output prefix),
// or 0 for a ciphertext without one. It reads only the public prefix, never decrypts.
func keyIDOf(ct []byte) uint32 {
	if len(ct) < 5 || (ct[0] != 0x01 && ct[0] != 0x00) {
		return 0
	}
	return binary.BigEndian.Uint32(ct[1:5])
}

func credentialBucket(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	b := tx.Bucket(bucketCredentials).Bucket([]byte(name))
	if b == nil {
		return nil, fmt.Errorf("credential %q: %w", name, ErrNotFound)
	}
	return b, nil
}

// readCredential reads a credential's metadata and policy.
func (s *Store) readCredential(b *bolt.Bucket, name string) (Credential, error) {
	rec, err := s.readCredentialRecord(b, name)
	if err != nil {
		return Credential{}, err
	}
	if err := checkBindings(b, name, rec); err != nil {
		return Credential{}, err
	}
	p, err := s.readPolicy(b, name)
	if err != nil {
		return Credential{}, err
	}
	c := credentialFrom(name, rec, p)
	if err := s.readLimits(b, name, &c); err != nil {
		return Credential{}, err
	}
	return c, nil
}

func credentialFrom(name string, rec credentialRecord, p *Policy) Credential {
	return Credential{
		Name: name, Version: rec.Current, CreatedAt: rec.CreatedAt, RotatedAt: rec.RotatedAt,
		Previous: rec.Previous, Pending: rec.Pending, Policy: p,
	}
}

func (s *Store) writeCredentialRecord(b *bolt.Bucket, name string, rec credentialRecord) error {
	return s.putRecord(b, credentialSlot(name), keyCredMeta, rec)
}

func (s *Store) readVersionRecord(versions *bolt.Bucket, name string, v uint64) (versionRecord, error) {
	var vrec versionRecord
	raw, err := s.getRecord(versions, versionsSlot(name), versionKey(v))
	if err != nil {
		return vrec, err
	}
	if raw == nil {
		return vrec, fmt.Errorf("credential %q version %d: %w", name, v, ErrNotFound)
	}
	if err := json.Unmarshal(raw, &vrec); err != nil || len(vrec.Ciphertext) == 0 {
		return vrec, fmt.Errorf("credential %q version %d: %w", name, v, ErrCorrupt)
	}
	return vrec, nil
}

func (s *Store) writeVersionRecord(versions *bolt.Bucket, name string, v uint64, vrec versionRecord) error {
	return s.putRecord(versions, versionsSlot(name), versionKey(v), vrec)
}

// nextVersion is the number the next version gets. Numbers are never reused, not even a discarded
// pending version's, so an audit record naming "v7" means one value only.
func nextVersion(rec credentialRecord) uint64 {
	return max(rec.Last, rec.Current, rec.Pending) + 1
}

// CreateCredential stores a new credential as version 1, current. ErrExists if the name is taken.
func (s *Store) CreateCredential(name string, value []byte, m VersionMeta) (Credential, error) {
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
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
		rec := credentialRecord{CreatedAt: m.At.UTC(), RotatedAt: m.At.UTC()}
		if _, err := s.putVersion(b, name, &rec, value, m, StateCurrent, 0); err != nil {
			return err
		}
		out = credentialFrom(name, rec, nil)
		return nil
	})
	return out, err
}

// AddVersion stores value as the next version of an existing credential and makes it current in
// the same transaction: a reader sees either the old or the new version, never neither. The old
// current version becomes the previous one.
func (s *Store) AddVersion(name string, value []byte, m VersionMeta) (Credential, error) {
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		if _, err := s.putVersion(b, name, &rec, value, m, StateCurrent, 0); err != nil {
			return err
		}
		out, err = s.readCredentialAfter(b, name, rec)
		return err
	})
	return out, err
}

// StageVersion stores value as a PENDING version: encrypted and numbered, but not served until
// PromoteVersion. A pending version left by an earlier, unfinished staging is replaced.
func (s *Store) StageVersion(name string, value []byte, m VersionMeta) (uint64, error) {
	var v uint64
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		v, err = s.putVersion(b, name, &rec, value, m, StatePending, 0)
		return err
	})
	return v, err
}

// PromoteVersion makes the pending version v current. verified records that the upstream accepted
// it. ErrNotFound if v is not the credential's pending version (another staging replaced it).
func (s *Store) PromoteVersion(name string, v uint64, verified bool, at time.Time) (Credential, error) {
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		if rec.Pending != v || v == 0 {
			return fmt.Errorf("credential %q has no pending version %d (another rotation replaced it): %w", name, v, ErrNotFound)
		}
		versions := b.Bucket(bucketVersions)
		vrec, err := s.readVersionRecord(versions, name, v)
		if err != nil {
			return err
		}
		vrec.Verified = vrec.Verified || verified
		if err := s.writeVersionRecord(versions, name, v, vrec); err != nil {
			return err
		}
		if err := s.makeCurrent(b, name, &rec, v, at); err != nil {
			return err
		}
		if err := s.writeCredentialRecord(b, name, rec); err != nil {
			return err
		}
		out, err = s.readCredentialAfter(b, name, rec)
		return err
	})
	return out, err
}

// DiscardVersion deletes the pending version v. It is a no-op if v is no longer pending.
func (s *Store) DiscardVersion(name string, v uint64) error {
	return s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		if rec.Pending != v || v == 0 {
			return nil
		}
		if err := b.Bucket(bucketVersions).Delete(versionKey(v)); err != nil {
			return err
		}
		rec.Pending = 0
		return s.writeCredentialRecord(b, name, rec)
	})
}

// Rollback makes the value of version `to` current again by storing it as a new version
// (how=rollback, From=to): version numbers only grow, so "calls after this returns use vN+1" holds
// for a rollback as for a rotation. to must be a kept version other than the current and pending
// ones; ErrNotFound otherwise.
func (s *Store) Rollback(name string, to uint64, m VersionMeta) (Credential, error) {
	m.How = HowRollback
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		rec, err := s.readCredentialRecord(b, name)
		if err != nil {
			return err
		}
		if to == 0 || to == rec.Current || to == rec.Pending {
			return fmt.Errorf("credential %q: version %d cannot be rolled back to: %w", name, to, ErrNotFound)
		}
		src, err := s.readVersionRecord(b.Bucket(bucketVersions), name, to)
		if err != nil {
			return err
		}
		value, err := s.data.Decrypt(src.Ciphertext, credentialAAD(name, to))
		if err != nil {
			return fmt.Errorf("credential %q version %d: %w: does not decrypt under the data keyset", name, to, ErrCorrupt)
		}
		defer clear(value)
		if _, err := s.putVersion(b, name, &rec, value, m, StateCurrent, to); err != nil {
			return err
		}
		out, err = s.readCredentialAfter(b, name, rec)
		return err
	})
	return out, err
}

// readCredentialAfter builds the Credential for rec, with the policy stored in b.
func (s *Store) readCredentialAfter(b *bolt.Bucket, name string, rec credentialRecord) (Credential, error) {
	if err := checkBindings(b, name, rec); err != nil {
		return Credential{}, err
	}
	p, err := s.readPolicy(b, name)
	if err != nil {
		return Credential{}, err
	}
	return credentialFrom(name, rec, p), nil
}

// putVersion encrypts value as version nextVersion(rec) of name and stores it in state, which is
// StatePending (replacing an earlier pending version) or StateCurrent (made current at once). It
// writes rec and returns the new version number.
func (s *Store) putVersion(b *bolt.Bucket, name string, rec *credentialRecord, value []byte, m VersionMeta, state VersionState, from uint64) (uint64, error) {
	next := nextVersion(*rec)
	ct, err := s.data.Encrypt(value, credentialAAD(name, next))
	if err != nil {
		return 0, fmt.Errorf("credential %q: encrypt: %w", name, err)
	}
	how := m.How
	if how == "" {
		how = HowManual
	}
	versions := b.Bucket(bucketVersions)
	vrec := versionRecord{
		CreatedAt: m.At.UTC(), Ciphertext: ct, CreatedByUID: m.ByUID, How: how, Verified: m.Verified,
		State: state, From: from,
	}
	if err := s.writeVersionRecord(versions, name, next, vrec); err != nil {
		return 0, err
	}
	rec.Last = next
	switch state {
	case StatePending:
		if rec.Pending != 0 {
			if err := versions.Delete(versionKey(rec.Pending)); err != nil {
				return 0, err
			}
		}
		rec.Pending = next
	case StateCurrent:
		if err := s.makeCurrent(b, name, rec, next, m.At); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("putVersion: bad state %q", state)
	}
	return next, s.writeCredentialRecord(b, name, *rec)
}

// makeCurrent makes version v current: the old current version becomes previous, and versions
// beyond keepVersions (oldest first, never the pending one) are deleted. The caller writes rec.
func (s *Store) makeCurrent(b *bolt.Bucket, name string, rec *credentialRecord, v uint64, at time.Time) error {
	versions := b.Bucket(bucketVersions)
	if rec.Current != 0 && rec.Current != v {
		old, err := s.readVersionRecord(versions, name, rec.Current)
		if err == nil {
			old.State = StatePrevious
			if err := s.writeVersionRecord(versions, name, rec.Current, old); err != nil {
				return err
			}
		}
		rec.Previous = rec.Current
	}
	cur, err := s.readVersionRecord(versions, name, v)
	if err != nil {
		return err
	}
	cur.State = StateCurrent
	if err := s.writeVersionRecord(versions, name, v, cur); err != nil {
		return err
	}
	rec.Current = v
	rec.RotatedAt = at.UTC()
	if rec.Pending != 0 && rec.Pending != v {
		// A committed rotation supersedes a staged one: its verification, if still running, will
		// find nothing to promote.
		if err := versions.Delete(versionKey(rec.Pending)); err != nil {
			return err
		}
	}
	rec.Pending = 0
	return s.prune(versions, rec)
}

// prune deletes the oldest versions beyond keepVersions. The pending version does not count and
// is never deleted; the current one is the newest non-pending version, so it is always kept.
func (s *Store) prune(versions *bolt.Bucket, rec *credentialRecord) error {
	// Deleting while iterating a cursor skips keys, so collect first.
	var keys [][]byte
	c := versions.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(k) == 8 && binary.BigEndian.Uint64(k) == rec.Pending && rec.Pending != 0 {
			continue
		}
		keys = append(keys, bytes.Clone(k))
	}
	if len(keys) <= s.keepVersions {
		return nil
	}
	for _, k := range keys[:len(keys)-s.keepVersions] {
		if binary.BigEndian.Uint64(k) == rec.Current {
			continue // cannot happen (current is the newest), but never delete what is served
		}
		if err := versions.Delete(k); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(k) == rec.Previous {
			rec.Previous = 0
		}
	}
	return nil
}

// GetCredential returns one credential's metadata and policy.
func (s *Store) GetCredential(name string) (Credential, error) {
	var out Credential
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		out, err = s.readCredential(b, name)
		return err
	})
	return out, err
}

// History returns a credential's metadata and its kept versions, oldest first.
func (s *Store) History(name string) (Credential, []Version, error) {
	var (
		cred Credential
		out  []Version
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		if cred, err = s.readCredential(b, name); err != nil {
			return err
		}
		return b.Bucket(bucketVersions).ForEach(func(k, raw []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("credential %q: %w: bad version key", name, ErrCorrupt)
			}
			v := binary.BigEndian.Uint64(k)
			body, _, err := s.openSealed(versionsSlot(name), k, raw)
			if err != nil {
				return err
			}
			var vrec versionRecord
			if err := json.Unmarshal(body, &vrec); err != nil {
				return fmt.Errorf("credential %q version %d: %w", name, v, ErrCorrupt)
			}
			how := vrec.How
			if how == "" {
				how = HowManual // written before "how" existed: put and rotate were the only ways
			}
			state := StatePrevious
			switch v {
			case cred.Version:
				state = StateCurrent
			case cred.Pending:
				state = StatePending
			}
			out = append(out, Version{
				Version: v, CreatedAt: vrec.CreatedAt, CreatedByUID: vrec.CreatedByUID, How: how,
				Verified: vrec.Verified, State: state, From: vrec.From, KeyID: keyIDOf(vrec.Ciphertext),
			})
			return nil
		})
	})
	if err != nil {
		return Credential{}, nil, err
	}
	return cred, out, nil
}

// LoadCredentialVersion decrypts one version of name (current, previous or pending). The caller
// owns the returned slice and should zero it when done.
func (s *Store) LoadCredentialVersion(name string, v uint64) ([]byte, error) {
	var ct []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		vrec, err := s.readVersionRecord(b.Bucket(bucketVersions), name, v)
		ct = vrec.Ciphertext // json decoding copied it out of the mmap
		return err
	})
	if err != nil {
		return nil, err
	}
	value, err := s.data.Decrypt(ct, credentialAAD(name, v))
	if err != nil {
		return nil, fmt.Errorf("credential %q version %d: %w: does not decrypt under the data keyset", name, v, ErrCorrupt)
	}
	return value, nil
}
