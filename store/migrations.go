package store

import (
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the schema this binary writes. Bump it only together with a migration below.
const SchemaVersion = 1

// migrations[i] upgrades a database from schema i+1 to i+2. Each runs in its own transaction
// together with the version bump, so a crash leaves either the old or the new schema.
var migrations = []func(tx *bolt.Tx) error{}

// migrate brings a database at schema `from` up to SchemaVersion.
func (s *Store) migrate(from uint32) error {
	if from == 0 {
		return fmt.Errorf("%w: data keyset present but no schema version", ErrCorrupt)
	}
	for v := from; v < SchemaVersion; v++ {
		step := migrations[v-1]
		if err := s.db.Update(func(tx *bolt.Tx) error {
			if err := step(tx); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(int(v+1))))
		}); err != nil {
			return fmt.Errorf("migrate schema %d -> %d: %w", v, v+1, err)
		}
	}
	return nil
}
