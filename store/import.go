package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// NewCredential is one credential for CreateCredentials.
type NewCredential struct {
	Name  string
	Value []byte
	// Event, if set, is the first entry of the credential's event list (credential history).
	Event *CredentialEvent
}

// CreateCredentials stores every entry as a new credential, version 1 and current, in one
// transaction: all of them are stored, or on any error none is. ErrExists if a name is taken
// or appears twice in entries.
func (s *Store) CreateCredentials(entries []NewCredential, m VersionMeta) ([]Credential, error) {
	out := make([]Credential, 0, len(entries))
	err := s.update(func(tx *bolt.Tx) error {
		out = out[:0]
		root := tx.Bucket(bucketCredentials)
		seen := make(map[string]bool, len(entries))
		for _, e := range entries {
			if seen[e.Name] {
				return fmt.Errorf("credential %q appears twice: %w", e.Name, ErrExists)
			}
			seen[e.Name] = true
			c, err := s.createIn(root, e, m)
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// createIn creates one credential under root inside the caller's transaction.
func (s *Store) createIn(root *bolt.Bucket, e NewCredential, m VersionMeta) (Credential, error) {
	if root.Bucket([]byte(e.Name)) != nil {
		return Credential{}, fmt.Errorf("credential %q: %w", e.Name, ErrExists)
	}
	b, err := root.CreateBucket([]byte(e.Name))
	if err != nil {
		return Credential{}, fmt.Errorf("credential %q: %w", e.Name, err)
	}
	if _, err := b.CreateBucket(bucketVersions); err != nil {
		return Credential{}, err
	}
	rec := credentialRecord{CreatedAt: m.At.UTC(), RotatedAt: m.At.UTC()}
	if _, err := s.putVersion(b, e.Name, &rec, e.Value, m, StateCurrent, 0); err != nil {
		return Credential{}, err
	}
	if e.Event != nil {
		ev := *e.Event
		ev.At = ev.At.UTC()
		// Sealed like every credential record (records.go), or Open would refuse the database.
		if err := s.putRecord(b, credentialSlot(e.Name), keyEvents, []CredentialEvent{ev}); err != nil {
			return Credential{}, err
		}
	}
	return credentialFrom(e.Name, rec, nil), nil
}
