package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// keyEvents holds a credential's recent rotation events, next to its meta record. The audit log
// has them too, among every other call; this short list is what `credential history` shows.
var keyEvents = []byte("events")

// MaxCredentialEvents is how many events each credential keeps (oldest dropped first).
const MaxCredentialEvents = 50

// CredentialEvent is one thing that happened to a credential: a rotation (or a failed one), a
// rollback, an import, a rekey, a grace fallback. It never holds a value.
type CredentialEvent struct {
	At      time.Time `json:"at"`
	Event   string    `json:"event"`
	Version uint64    `json:"version,omitempty"`
	ByUID   *uint32   `json:"by_uid,omitempty"`
	Detail  string    `json:"detail,omitempty"` // e.g. an error message; built from names and codes only
}

func (s *Store) readEvents(b *bolt.Bucket, name string) ([]CredentialEvent, error) {
	raw, err := s.getRecord(b, credentialSlot(name), keyEvents)
	if raw == nil || err != nil {
		return nil, err
	}
	var evs []CredentialEvent
	if err := json.Unmarshal(raw, &evs); err != nil {
		return nil, fmt.Errorf("credential %q: %w: bad event list", name, ErrCorrupt)
	}
	return evs, nil
}

// AppendCredentialEvent adds e to name's event list, keeping the newest MaxCredentialEvents.
// ErrNotFound if the credential does not exist.
func (s *Store) AppendCredentialEvent(name string, e CredentialEvent) error {
	e.At = e.At.UTC()
	return s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		evs, err := s.readEvents(b, name)
		if errors.Is(err, ErrTampered) {
			return err // keep the evidence: a list that does not verify is not overwritten
		}
		if err != nil {
			evs = nil // a corrupt list is replaced rather than blocking every rotation
		}
		evs = append(evs, e)
		if len(evs) > MaxCredentialEvents {
			evs = evs[len(evs)-MaxCredentialEvents:]
		}
		return s.putRecord(b, credentialSlot(name), keyEvents, evs)
	})
}

// CredentialEvents returns name's recent events, oldest first.
func (s *Store) CredentialEvents(name string) ([]CredentialEvent, error) {
	var evs []CredentialEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		evs, err = s.readEvents(b, name)
		return err
	})
	return evs, err
}
