package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	bolt "go.etcd.io/bbolt"
)

// RekeyResult says what Rekey did.
type RekeyResult struct {
	NewPrimaryKeyID uint32   // the data key every version is now encrypted under
	Resumed         bool     // an earlier, interrupted rekey was finished instead of a new one started
	Reencrypted     int      // versions re-encrypted by this call
	Total           int      // versions stored
	RemovedKeyIDs   []uint32 // old data keys deleted from the data keyset
}

// rekeyHook, if set by a test, runs after each re-encrypted version; an error stops Rekey there,
// as a crash would.
type rekeyHook func(done int) error

// Rekey rotates the data keyset: it adds a new AES-256-GCM primary key, re-encrypts every stored
// credential version under it, then deletes the old data keys.
//
// Each step commits on its own: first the new keyset (with a marker naming the new primary), then
// each version in its own transaction, then the keyset without the old keys (and no marker). A
// crash at any point loses nothing: every version decrypts under the keyset stored with it, and the
// next Rekey sees the marker and finishes the interrupted one instead of adding another key.
// Calls running meanwhile are unaffected: versions are swapped one at a time and the in-memory
// primitive keeps every key until the process exits.
func (s *Store) Rekey() (RekeyResult, error) { return s.rekey(nil) }

func (s *Store) rekey(hook rekeyHook) (RekeyResult, error) {
	k := s.keys
	k.mu.Lock()
	defer k.mu.Unlock()
	var res RekeyResult

	// 1. Start (new primary + marker, committed together) or resume.
	var blob, marker []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		blob, marker = bytes.Clone(m.Get(keyDataKeyset)), bytes.Clone(m.Get(keyRekeyTarget))
		return nil
	}); err != nil {
		return res, err
	}
	h, err := s.readDataKeyset(blob)
	if err != nil {
		return res, err
	}
	if marker != nil {
		res.Resumed = true
	} else {
		mgr := keyset.NewManagerFromHandle(h)
		id, err := mgr.Add(aead.AES256GCMKeyTemplate())
		if err != nil {
			return res, fmt.Errorf("rekey: add data key: %w", err)
		}
		if err := mgr.SetPrimary(id); err != nil {
			return res, fmt.Errorf("rekey: %w", err)
		}
		if h, err = mgr.Handle(); err != nil {
			return res, fmt.Errorf("rekey: %w", err)
		}
		if err := s.writeDataKeyset(blob, h, func(m *bolt.Bucket) error {
			return m.Put(keyRekeyTarget, []byte(strconv.FormatUint(uint64(id), 10)))
		}); err != nil {
			return res, err
		}
	}
	primary := h.KeysetInfo().GetPrimaryKeyId()
	res.NewPrimaryKeyID = primary
	full, err := aead.New(h)
	if err != nil {
		return res, fmt.Errorf("rekey: data keyset: %w", err)
	}
	// From here on new versions are written under the new primary; the primitives it replaces stay
	// behind it for decryption (swapAEAD), so nothing readable becomes unreadable.
	k.aead.push(full)

	// 2. Re-encrypt, one version per transaction.
	type slot struct {
		name string
		v    uint64
	}
	var todo []slot
	if err := s.db.View(func(tx *bolt.Tx) error {
		return forEachVersion(tx, func(name string, v uint64, vrec versionRecord) error {
			res.Total++
			if keyIDOf(vrec.Ciphertext) != primary {
				todo = append(todo, slot{name, v})
			}
			return nil
		})
	}); err != nil {
		return res, err
	}
	for _, sl := range todo {
		var done bool
		if err := s.update(func(tx *bolt.Tx) error {
			var err error
			done, err = s.reencrypt(tx, sl.name, sl.v, primary)
			return err
		}); err != nil {
			return res, err
		}
		if done {
			res.Reencrypted++
			if hook != nil {
				if err := hook(res.Reencrypted); err != nil {
					return res, err
				}
			}
		}
	}

	// 3. Finish: re-encrypt any straggler (a version written by a call that began before the swap)
	// and drop the old keys, in one transaction so no version can be left under a deleted key.
	if err := s.update(func(tx *bolt.Tx) error {
		var stragglers []slot
		if err := forEachVersion(tx, func(name string, v uint64, vrec versionRecord) error {
			if keyIDOf(vrec.Ciphertext) != primary {
				stragglers = append(stragglers, slot{name, v})
			}
			return nil
		}); err != nil {
			return err
		}
		for _, sl := range stragglers {
			done, err := s.reencrypt(tx, sl.name, sl.v, primary)
			if err != nil {
				return err
			}
			if done {
				res.Reencrypted++
			}
		}
		m := tx.Bucket(bucketMeta)
		cur := m.Get(keyDataKeyset)
		h, err := s.readDataKeyset(cur)
		if err != nil {
			return err
		}
		mgr := keyset.NewManagerFromHandle(h)
		for _, ki := range h.KeysetInfo().GetKeyInfo() {
			if id := ki.GetKeyId(); id != primary {
				if err := mgr.Delete(id); err != nil {
					return fmt.Errorf("rekey: delete old data key %d: %w", id, err)
				}
				res.RemovedKeyIDs = append(res.RemovedKeyIDs, id)
			}
		}
		pruned, err := mgr.Handle()
		if err != nil {
			return err
		}
		enc, err := s.encryptDataKeyset(pruned)
		if err != nil {
			return err
		}
		if err := m.Put(keyDataKeyset, enc); err != nil {
			return err
		}
		return m.Delete(keyRekeyTarget)
	}); err != nil {
		res.RemovedKeyIDs = nil
		return res, err
	}
	slices.Sort(res.RemovedKeyIDs)
	return res, nil
}

// reencrypt moves one version to the primary data key. It reports false if the version is gone
// or already there.
func (s *Store) reencrypt(tx *bolt.Tx, name string, v uint64, primary uint32) (bool, error) {
	b := tx.Bucket(bucketCredentials).Bucket([]byte(name))
	if b == nil {
		return false, nil // deleted meanwhile
	}
	versions := b.Bucket(bucketVersions)
	if versions.Get(versionKey(v)) == nil {
		return false, nil // pruned meanwhile
	}
	vrec, err := s.readVersionRecord(versions, name, v)
	if err != nil {
		return false, err
	}
	if keyIDOf(vrec.Ciphertext) == primary {
		return false, nil
	}
	aad := credentialAAD(name, v)
	pt, err := s.data.Decrypt(vrec.Ciphertext, aad)
	if err != nil {
		return false, fmt.Errorf("rekey: credential %q version %d: %w: does not decrypt under the data keyset; delete or roll it away and run rekey again", name, v, ErrCorrupt)
	}
	ct, err := s.data.Encrypt(pt, aad)
	clear(pt)
	if err != nil {
		return false, fmt.Errorf("rekey: credential %q version %d: encrypt: %w", name, v, err)
	}
	if keyIDOf(ct) != primary {
		return false, fmt.Errorf("rekey: credential %q version %d: the data primitive is not using key %d", name, v, primary)
	}
	vrec.Ciphertext = ct
	return true, s.writeVersionRecord(versions, name, v, vrec)
}

// forEachVersion calls fn for every stored credential version. It reads the records without
// verifying their MACs (InspectKeys has no keys, and only public key ids are read from them):
// whatever acts on a version reads it again verified (reencrypt).
func forEachVersion(tx *bolt.Tx, fn func(name string, v uint64, vrec versionRecord) error) error {
	creds := tx.Bucket(bucketCredentials)
	return creds.ForEachBucket(func(k []byte) error {
		name := string(k)
		versions := creds.Bucket(k).Bucket(bucketVersions)
		if versions == nil {
			return nil
		}
		return versions.ForEach(func(key, _ []byte) error {
			if len(key) != 8 {
				return fmt.Errorf("credential %q: %w: bad version key", name, ErrCorrupt)
			}
			v := binary.BigEndian.Uint64(key)
			vrec, err := peekVersionRecord(versions.Get(key), name, v)
			if err != nil {
				return err
			}
			return fn(name, v, vrec)
		})
	})
}

// readDataKeyset decrypts a stored data keyset with the master keyset the store was opened with.
func (s *Store) readDataKeyset(blob []byte) (*keyset.Handle, error) {
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(blob)), s.keys.masterKey(), dataKeysetAAD)
	if err != nil {
		return nil, fmt.Errorf("%w: the master keyset changed since brokerd opened the database; restart brokerd and try again", ErrWrongMasterKey)
	}
	return h, nil
}

func (s *Store) encryptDataKeyset(h *keyset.Handle) ([]byte, error) {
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), s.keys.masterKey(), dataKeysetAAD); err != nil {
		return nil, fmt.Errorf("encrypt data keyset: %w", err)
	}
	return buf.Bytes(), nil
}

// writeDataKeyset replaces the stored data keyset (expected to still be old) with h, running
// also in the same transaction.
func (s *Store) writeDataKeyset(old []byte, h *keyset.Handle, also func(*bolt.Bucket) error) error {
	enc, err := s.encryptDataKeyset(h)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if !bytes.Equal(m.Get(keyDataKeyset), old) {
			return fmt.Errorf("rekey: the data keyset changed meanwhile (a re-wrap?); run rekey again")
		}
		if err := m.Put(keyDataKeyset, enc); err != nil {
			return err
		}
		return also(m)
	})
}

// peekVersionRecord decodes a version record, sealed or (in a database not yet migrated to
// record MACs) not, without verifying it: only for reading public key ids.
func peekVersionRecord(raw []byte, name string, v uint64) (versionRecord, error) {
	var vrec versionRecord
	if _, _, body, ok := splitSealed(raw); ok {
		raw = body
	}
	if err := json.Unmarshal(raw, &vrec); err != nil {
		return vrec, fmt.Errorf("credential %q version %d: %w", name, v, ErrCorrupt)
	}
	return vrec, nil
}
