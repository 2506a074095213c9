package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Workload registrations (issue 17): who may fetch a token by attestation, with no secret, and
// the scope and limits of the tokens they get. They live in workloads/<name>, sealed with the
// record MAC like tokens, so whoever can write the file cannot add a registration for their own
// uid or widen one. The bucket is created by the first registration: a database without it
// simply has none, so no schema bump is needed and older databases open unchanged.

var bucketWorkloads = []byte("workloads")

func workloadsSlot() slot { return slot{bucketWorkloads} }

// Workload is a stored registration. Every selector that is set must match the caller.
type Workload struct {
	Name  string   `json:"name"`
	Tools []string `json:"tools"`
	// Selectors.
	UIDs      []uint32 `json:"uids,omitempty"`
	GIDs      []uint32 `json:"gids,omitempty"`
	Exe       string   `json:"exe,omitempty"`
	ExeSHA256 string   `json:"exe_sha256,omitempty"`
	Unit      string   `json:"unit,omitempty"`
	// What each fetched token gets.
	TTL           time.Duration `json:"ttl"`
	MaxUses       uint64        `json:"max_uses,omitempty"`
	BudgetCredits uint64        `json:"budget_credits,omitempty"`
	BudgetPeriod  string        `json:"budget_period,omitempty"`
	RateLimit     uint32        `json:"rate_limit,omitempty"`
	RatePeriod    time.Duration `json:"rate_period,omitempty"`
	Label         string        `json:"label,omitempty"`

	CreatedAt    time.Time `json:"created_at"`
	CreatedByUID uint32    `json:"created_by_uid"`
}

// PutWorkload stores a new registration; ErrExists if the name is taken.
func (s *Store) PutWorkload(w Workload) error {
	return s.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketWorkloads)
		if err != nil {
			return err
		}
		if b.Get([]byte(w.Name)) != nil {
			return fmt.Errorf("workload %q: %w", w.Name, ErrExists)
		}
		return s.putRecord(b, workloadsSlot(), []byte(w.Name), w)
	})
}

// DeleteWorkload removes a registration; ErrNotFound if there is none.
func (s *Store) DeleteWorkload(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketWorkloads)
		if b == nil || b.Get([]byte(name)) == nil {
			return fmt.Errorf("workload %q: %w", name, ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
}

// ListWorkloads returns every registration, sorted by name. A record that fails its MAC fails
// the whole list (ErrTampered): a forged registration is never matched.
func (s *Store) ListWorkloads() ([]Workload, error) {
	var out []Workload
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketWorkloads)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			body, _, err := s.openSealed(workloadsSlot(), k, v)
			if err != nil {
				return err
			}
			var w Workload
			if err := json.Unmarshal(body, &w); err != nil || w.Name != string(k) {
				return fmt.Errorf("%w: workload record %q does not decode; restore the database from a backup, or `brokerctl workload remove %s` and add it again", ErrCorrupt, k, k)
			}
			out = append(out, w)
			return nil
		})
	})
	return out, err
}
