package store

import (
	"fmt"
	"strconv"

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
