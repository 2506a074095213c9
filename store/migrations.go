package store

import (
	"bytes"
	"fmt"
	"strconv"

	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the schema this binary writes. Bump it only together with a migration below.
const SchemaVersion = 2

// migrations[i] upgrades a database from schema i+1 to i+2. Each runs in its own transaction
// together with the version bump, so a crash leaves either the old or the new schema. kek is the
// master keyset the database was opened with (proven right before any migration runs).
var migrations = []func(s *Store, tx *bolt.Tx, kek tink.AEAD) error{
	(*Store).migrateRecordMACs, // 1 -> 2: record MACs (records.go)
}

// migrate brings a database at schema `from` up to SchemaVersion.
func (s *Store) migrate(from uint32, kek tink.AEAD) error {
	if from == 0 {
		return fmt.Errorf("%w: data keyset present but no schema version", ErrCorrupt)
	}
	if from < 2 {
		if err := s.checkSchemaNotPutBack(kek); err != nil {
			return err
		}
	}
	for v := from; v < SchemaVersion; v++ {
		step := migrations[v-1]
		if err := s.db.Update(func(tx *bolt.Tx) error {
			if err := step(s, tx, kek); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(int(v+1))))
		}); err != nil {
			return fmt.Errorf("migrate schema %d -> %d: %w", v, v+1, err)
		}
	}
	return nil
}

// checkSchemaNotPutBack refuses a database whose schema version says 1 (before record MACs) but
// that a brokerd sealing records has written. The 1 -> 2 migration trusts and seals whatever the
// records hold, so someone with write access to the file but no master keyset could otherwise
// strip the seals, edit a token's scope or a rotate command, write "1" as the version, and have
// brokerd seal the forgery as genuine. Proof of a schema-2 writer is the audit chain head, which
// is MACed under the audit keyset and says so (chainPoint.RecordMACs). A schema-1 brokerd writes
// a head when it opens a database (since 2026-11-26, before any schema-1 release), so a schema-1
// database holding tokens or credentials but no head had its audit log removed: refused too.
func (s *Store) checkSchemaNotPutBack(kek tink.AEAD) error {
	var keysetBlob []byte
	var records bool
	s.db.View(func(tx *bolt.Tx) error {
		keysetBlob = bytes.Clone(tx.Bucket(bucketMeta).Get(keyAuditKeyset))
		for _, name := range [][]byte{bucketTokens, bucketCredentials, bucketWorkloads} {
			if b := tx.Bucket(name); b != nil {
				if k, _ := b.Cursor().First(); k != nil {
					records = true
				}
			}
		}
		return nil
	})
	putBack := func(why string) error {
		return fmt.Errorf("%w: the database's schema version says 1 (before record MACs), but %s: the version was put back, which would have brokerd trust edited records; brokerd changed nothing: restore the database from a backup", ErrTampered, why)
	}
	if keysetBlob == nil {
		return s.db.View(func(tx *bolt.Tx) error {
			switch {
			case tx.Bucket(bucketMeta).Get(keyAuditHead) != nil:
				return putBack("its audit chain head has no audit keyset to verify it")
			case records:
				return putBack("it holds tokens or credentials and no audit chain head (a schema-1 brokerd writes one when it opens a database)")
			}
			return nil
		})
	}
	h, err := readAuditKeyset(kek, keysetBlob)
	if err != nil {
		// The data keyset opened with this master key a moment ago, so this keyset was changed,
		// or a KMS holding the master key failed this one call.
		return fmt.Errorf("%w: the database's schema version says 1 (before record MACs), and its audit keyset does not open with the master keyset that opened its data keyset: if the master key is in a KMS, start brokerd again; if this persists, the file was changed: restore the database from a backup", ErrTampered)
	}
	m, err := mac.New(h)
	if err != nil {
		return fmt.Errorf("audit keyset: %w", err)
	}
	var head *chainPoint
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
		head, err = (&auditWriter{mac: m}).readPoint(tx, keyAuditHead)
		return err
	}); err != nil {
		return putBack("its audit chain head does not verify")
	}
	switch {
	case head == nil && records:
		return putBack("it holds tokens or credentials and no audit chain head (a schema-1 brokerd writes one when it opens a database)")
	case head != nil && head.RecordMACs:
		return putBack("its audit chain head was written by a brokerd that seals records (schema 2)")
	}
	return nil
}
