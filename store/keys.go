package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"
)

// ErrKeyInUse reports a key that cannot be removed because stored data still needs it.
var ErrKeyInUse = errors.New("key is still in use")

// keyRekeyTarget, in meta, holds the data key id an unfinished rekey is moving versions to.
var keyRekeyTarget = []byte("rekey_target")

// dataKeys is the Store's key state: the master keyset it was opened with (needed to re-encrypt
// the data keyset when Rekey adds a key) and the swappable data-keyset primitive.
type dataKeys struct {
	mu   sync.Mutex // serialises changes to the stored data keyset (Rekey, RewrapIfNeeded)
	kek  atomic.Pointer[aeadBox]
	aead *swapAEAD
	// info caches the data keyset's key list for the stored blob it was read from, so Keys
	// (Status, every few seconds from monitoring) does not ask the KEK, which may be a KMS that is
	// down: a KMS outage after start must not stop status.
	info atomic.Pointer[dataKeysetInfo]
}

type dataKeysetInfo struct {
	blob []byte
	info *tinkpb.KeysetInfo
}

func (k *dataKeys) masterKey() tink.AEAD { return k.kek.Load().a }

// swapAEAD is a tink.AEAD whose primitive Rekey replaces while calls are running. Encrypt uses the
// newest primitive; Decrypt falls back to the ones it replaced, so a call that read a ciphertext
// before a rekey finished still decrypts it afterwards, even once the old key is gone from the
// stored keyset. Old keys thus stay in memory until the process exits, as they would anyway.
type swapAEAD struct{ p atomic.Pointer[aeadBox] }

type aeadBox struct {
	a     tink.AEAD
	older *aeadBox
}

// push installs a as the newest primitive, keeping the current ones for decryption.
func (s *swapAEAD) push(a tink.AEAD) { s.p.Store(&aeadBox{a: a, older: s.p.Load()}) }

func (s *swapAEAD) Encrypt(pt, ad []byte) ([]byte, error) { return s.p.Load().a.Encrypt(pt, ad) }

func (s *swapAEAD) Decrypt(ct, ad []byte) ([]byte, error) {
	box := s.p.Load()
	pt, err := box.a.Decrypt(ct, ad)
	for b := box.older; err != nil && b != nil; b = b.older {
		pt, err = b.a.Decrypt(ct, ad)
	}
	return pt, err
}

// openKeys wraps the data primitive built by init so Rekey can swap it, and remembers kek.
func (s *Store) openKeys(kek tink.AEAD) {
	sw := &swapAEAD{}
	sw.push(s.data)
	s.data = sw
	s.keys = &dataKeys{aead: sw}
	s.keys.kek.Store(&aeadBox{a: kek})
	if s.openedInfo != nil {
		s.keys.info.Store(s.openedInfo)
	}
}

// PrimaryKeyID returns the id of a (TINK-prefixed) AEAD keyset's primary key, learned from the
// prefix of a throwaway ciphertext; 0 if its ciphertexts carry no key id.
func PrimaryKeyID(a tink.AEAD) (uint32, error) {
	ct, err := a.Encrypt(nil, []byte("credbroker/key-id-probe"))
	if err != nil {
		return 0, err
	}
	return keyIDOf(ct), nil
}

// wrappingKeyID returns the id of the master key that encrypts a stored EncryptedKeyset, without
// decrypting anything.
func wrappingKeyID(blob []byte) (uint32, error) {
	var ek tinkpb.EncryptedKeyset
	if err := proto.Unmarshal(blob, &ek); err != nil {
		return 0, fmt.Errorf("%w: stored keyset is not a Tink EncryptedKeyset", ErrCorrupt)
	}
	return keyIDOf(ek.GetEncryptedKeyset()), nil
}

// KeyUsage says which keys a database needs. It is read from public key ids only: nothing is
// decrypted.
type KeyUsage struct {
	// MasterKeyIDs are the master keys that wrap the keysets stored in the database (the data
	// keyset, the audit keyset): a master keyset must hold all of them to open it. Normally one.
	MasterKeyIDs []uint32
	// DataPrimaryKeyID is the data key new versions are encrypted under, and DataKeyIDs every key
	// in the data keyset. Both are known only to Keys (the list is inside the encryption), not to
	// InspectKeys.
	DataPrimaryKeyID uint32
	DataKeyIDs       []uint32
	// VersionsByKey counts stored credential versions per data key id.
	VersionsByKey map[uint32]int
	// RekeyTarget is the data key an unfinished rekey moves versions to; 0 if none is running.
	RekeyTarget uint32

	wrapped []wrappedBlob
}

type wrappedBlob struct{ blob, aad []byte }

// OpensWith reports whether kek decrypts every keyset the database stores under the master
// keyset, i.e. whether a brokerd started with kek could open it.
func (u KeyUsage) OpensWith(kek tink.AEAD) bool {
	if len(u.wrapped) == 0 {
		return false
	}
	for _, w := range u.wrapped {
		if _, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(w.blob)), kek, w.aad); err != nil {
			return false
		}
	}
	return true
}

func keyUsage(tx *bolt.Tx) (KeyUsage, error) {
	u := KeyUsage{VersionsByKey: map[uint32]int{}}
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return u, fmt.Errorf("%w: no meta bucket (is this a credbroker database?)", ErrCorrupt)
	}
	for _, w := range wrappedKeysets {
		blob := m.Get(w.key)
		if blob == nil {
			if w.required {
				return u, fmt.Errorf("%w: no %s", ErrCorrupt, w.name)
			}
			continue
		}
		id, err := wrappingKeyID(blob)
		if err != nil {
			return u, err
		}
		if !slices.Contains(u.MasterKeyIDs, id) {
			u.MasterKeyIDs = append(u.MasterKeyIDs, id)
		}
		u.wrapped = append(u.wrapped, wrappedBlob{bytes.Clone(blob), w.aad})
	}
	slices.Sort(u.MasterKeyIDs)
	if raw := m.Get(keyRekeyTarget); raw != nil {
		fmt.Sscan(string(raw), &u.RekeyTarget)
	}
	err := forEachVersion(tx, func(_ string, _ uint64, vrec versionRecord) error {
		u.VersionsByKey[keyIDOf(vrec.Ciphertext)]++
		return nil
	})
	return u, err
}

// Keys reports which master and data keys the database uses.
func (s *Store) Keys() (KeyUsage, error) {
	var (
		u    KeyUsage
		blob []byte
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		u, err = keyUsage(tx)
		blob = bytes.Clone(tx.Bucket(bucketMeta).Get(keyDataKeyset))
		return err
	})
	if err != nil {
		return u, err
	}
	// The data keyset's key list is inside its encryption; only the store can read it. It is
	// decrypted once per stored blob (a rekey or re-wrap writes a new one).
	var info *tinkpb.KeysetInfo
	if c := s.keys.info.Load(); c != nil && bytes.Equal(c.blob, blob) {
		info = c.info
	} else {
		h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(blob)), s.keys.masterKey(), dataKeysetAAD)
		if err != nil {
			return u, fmt.Errorf("data keyset: %w", ErrWrongMasterKey)
		}
		info = h.KeysetInfo()
		s.keys.info.Store(&dataKeysetInfo{blob: blob, info: info})
	}
	u.DataPrimaryKeyID = info.GetPrimaryKeyId()
	for _, ki := range info.GetKeyInfo() {
		u.DataKeyIDs = append(u.DataKeyIDs, ki.GetKeyId())
	}
	return u, nil
}

// InspectKeys reports which keys the database at path uses, opening it read-only without any
// keyset. A database that brokerd holds open is refused with ErrLocked (bbolt's lock is
// exclusive): ask the running brokerd (Status) instead.
func InspectKeys(path string) (KeyUsage, error) {
	if _, err := os.Stat(path); err != nil {
		return KeyUsage{}, fmt.Errorf("database %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return KeyUsage{}, fmt.Errorf("open database %s: %w (brokerd is running on it)", path, ErrLocked)
		}
		return KeyUsage{}, fmt.Errorf("open database %s: %w", path, err)
	}
	defer db.Close()
	var u KeyUsage
	err = db.View(func(tx *bolt.Tx) error {
		var err error
		u, err = keyUsage(tx)
		return err
	})
	return u, err
}

// RewrapIfNeeded re-wraps the keysets stored under the master keyset (see Rewrap) if any of them
// is wrapped under a key other than kek's primary: this is what makes `brokerctl keyset rotate`
// take effect when brokerd starts with the rotated keyset. It returns the master key ids the
// database used before and whether it re-wrapped.
func (s *Store) RewrapIfNeeded(kek tink.AEAD) (before []uint32, rewrapped bool, err error) {
	primary, err := PrimaryKeyID(kek)
	if err != nil {
		return nil, false, fmt.Errorf("master keyset: %w", err)
	}
	u, err := s.Keys()
	if err != nil {
		return nil, false, err
	}
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if primary == 0 || slices.Equal(u.MasterKeyIDs, []uint32{primary}) {
		if !u.OpensWith(kek) {
			return u.MasterKeyIDs, false, ErrWrongMasterKey
		}
		s.keys.kek.Store(&aeadBox{a: kek})
		return u.MasterKeyIDs, false, nil
	}
	if !u.OpensWith(kek) {
		return u.MasterKeyIDs, false, ErrWrongMasterKey
	}
	// Publish the new master keyset before the re-wrap commits: it opens the old wrapping (just
	// checked) and the new one, so a concurrent Keys() (Status) never pairs the new wrapping with
	// the old keyset. On failure the old one comes back.
	old := s.keys.kek.Load()
	s.keys.kek.Store(&aeadBox{a: kek})
	if err := s.Rewrap(kek); err != nil {
		if errors.Is(err, ErrOutcomeUnknown) {
			// Under the old primary or the new one, the database opens with kek (it holds both),
			// so kek stays; the operator must restart with this keyset, not the one before.
			return u.MasterKeyIDs, false, fmt.Errorf("re-wrap under the master keyset's new primary key: %w: the database may now be under it: "+
				"restart brokerd with this master keyset (it opens the database either way), not an older copy", err)
		}
		s.keys.kek.Store(old)
		return u.MasterKeyIDs, false, err
	}
	return u.MasterKeyIDs, true, nil
}
