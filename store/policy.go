package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// keyPolicy holds a credential's rotation policy, next to its meta record.
var keyPolicy = []byte("policy")

// Policy is a credential's rotation policy.
type Policy struct {
	// MaxAge is how long a version may stay current before the credential is due; 0 means never
	// due.
	MaxAge time.Duration `json:"max_age,omitempty"`
	// RotateCommand, if set, is the argv brokerd runs (no shell) to get a new key when the
	// credential is due. RotateCommand[0] is an absolute path.
	RotateCommand []string `json:"rotate_command,omitempty"`
	// Verify stages each scheduled rotation as pending and promotes it only if the upstream accepts
	// the new key.
	Verify bool `json:"verify,omitempty"`
}

// IsZero reports whether p sets nothing.
func (p Policy) IsZero() bool { return p.MaxAge == 0 && len(p.RotateCommand) == 0 && !p.Verify }

// NextDue returns when a version that became current at rotatedAt is due, and false if the policy
// sets no maximum age.
func (p *Policy) NextDue(rotatedAt time.Time) (time.Time, bool) {
	if p == nil || p.MaxAge <= 0 {
		return time.Time{}, false
	}
	return rotatedAt.Add(p.MaxAge), true
}

func (s *Store) readPolicy(b *bolt.Bucket, name string) (*Policy, error) {
	raw, err := s.getRecord(b, credentialSlot(name), keyPolicy)
	if raw == nil || err != nil {
		return nil, err
	}
	var p Policy
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("credential %q: %w: bad policy", name, ErrCorrupt)
	}
	return &p, nil
}

// SetPolicy stores p as name's rotation policy; a zero p removes it. ErrNotFound if the credential
// does not exist. Validation of the command is the caller's job.
func (s *Store) SetPolicy(name string, p Policy) (Credential, error) {
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		if p.IsZero() {
			if err := b.Delete(keyPolicy); err != nil {
				return err
			}
		} else {
			p.RotateCommand = slices.Clone(p.RotateCommand)
			if err := s.putRecord(b, credentialSlot(name), keyPolicy, p); err != nil {
				return err
			}
		}
		if err := s.rebind(b, name); err != nil {
			return err
		}
		out, err = s.readCredential(b, name)
		return err
	})
	return out, err
}
