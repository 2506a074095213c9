package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrExhausted reports a token whose use limit is spent.
var ErrExhausted = errors.New("use limit reached")

// Token is a stored token: everything about it but the secret, of which only a SHA-256 is kept.
type Token struct {
	ID          string    `json:"id"`
	SecretHash  []byte    `json:"secret_sha256"`
	Tools       []string  `json:"tools"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	MaxUses     uint64    `json:"max_uses,omitempty"`
	Uses        uint64    `json:"uses,omitempty"`
	BindUID     *uint32   `json:"bind_uid,omitempty"`
	Label       string    `json:"label,omitempty"`
	MintedByUID uint32    `json:"minted_by_uid"`
	Revoked     bool      `json:"revoked,omitempty"`
	RevokedAt   time.Time `json:"revoked_at,omitzero"`
	LastUsedAt  time.Time `json:"last_used_at,omitzero"`
	// RateLimit calls per RatePeriod; 0 means unlimited. Enforced in memory by the broker.
	RateLimit  uint32        `json:"rate_limit,omitempty"`
	RatePeriod time.Duration `json:"rate_period,omitempty"`
	// BudgetCredits per BudgetPeriod ("day" or "month", UTC); 0 = no budget. BudgetSpent counts
	// the credits spent in BudgetWindow (the period's name, e.g. "2026-11-25"); a new window
	// starts from zero.
	BudgetCredits uint64 `json:"budget_credits,omitempty"`
	BudgetPeriod  string `json:"budget_period,omitempty"`
	BudgetWindow  string `json:"budget_window,omitempty"`
	BudgetSpent   uint64 `json:"budget_spent,omitempty"`
	// SharedCache lets the token use the result cache shared by all shared-cache tokens.
	SharedCache bool `json:"shared_cache,omitempty"`
	// Workload is the registration a token fetched by attestation came from (FetchToken).
	// ProcessBound tokens die with the process that fetched them; brokerd revokes them at start,
	// since it can no longer watch their processes.
	Workload     string `json:"workload,omitempty"`
	ProcessBound bool   `json:"process_bound,omitempty"`
}

// Live reports whether the token is neither revoked nor expired at now.
func (t *Token) Live(now time.Time) bool { return !t.Revoked && now.Before(t.ExpiresAt) }

// DecodeToken parses a token record's body (what its MAC covers, records.go), rejecting records
// that could not have been written by PutToken (so a corrupted file never yields a usable token).
func DecodeToken(raw []byte) (Token, error) {
	var t Token
	if err := json.Unmarshal(raw, &t); err != nil {
		return Token{}, fmt.Errorf("%w: token record: %v", ErrCorrupt, err)
	}
	if t.ID == "" || len(t.SecretHash) != 32 || t.ExpiresAt.IsZero() {
		return Token{}, fmt.Errorf("%w: token record incomplete", ErrCorrupt)
	}
	return t, nil
}

// PutToken stores a new token. ErrExists if the id is taken (the caller draws a new id).
func (s *Store) PutToken(t Token) error {
	raw, err := json.Marshal(t)
	if err != nil {
		return err
	}
	// Group-committed: concurrent writes share one fsync. A token touches no credential, so the
	// current-version cache stays valid.
	var result error
	err = s.batch(func(tx *bolt.Tx) error {
		// An id taken is the caller's answer, not a failed transaction (DB.Batch would retry it).
		result = s.putNewToken(tx, t.ID, raw, s.auditStamp())
		if errors.Is(result, ErrExists) {
			return nil
		}
		return result
	})
	if err != nil {
		return err
	}
	return result
}

// PutTokenAudited stores a new token and rec, the audit record of the call that mints it, in one
// transaction of the audit log's group commit: the token is never durable without its record, and
// a mint costs one commit, shared with whatever other records are waiting. ErrExists if the id is
// taken (nothing is written; the caller draws a new id); ErrAuditUnavailable if the commit fails.
// It waits for the commit even if ctx ends: the caller must learn whether the token exists.
func (s *Store) PutTokenAudited(ctx context.Context, t Token, rec AuditRecord) error {
	raw, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return s.appendAudit(context.WithoutCancel(ctx), &auditReq{rec: rec, done: make(chan error, 1),
		apply: func(tx *bolt.Tx, seq uint64) error { return s.putNewToken(tx, t.ID, raw, seq) }})
}

// putNewToken stores body sealed and stamped with the audit seq stamp (records.go).
func (s *Store) putNewToken(tx *bolt.Tx, id string, body []byte, stamp uint64) error {
	b := tx.Bucket(bucketTokens)
	if b.Get([]byte(id)) != nil {
		return fmt.Errorf("token %s: %w", id, ErrExists)
	}
	sealed, err := sealWith(s.recMAC, tokensSlot(), []byte(id), body, stamp)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), sealed)
}

// openToken verifies and decodes the sealed token record stored under key: ErrTampered if it
// does not verify (it is never used then), ErrCorrupt if it verifies but does not decode.
func (s *Store) openToken(key, raw []byte) (Token, error) {
	body, _, err := s.openSealed(tokensSlot(), key, raw)
	if err != nil {
		return Token{}, err
	}
	return DecodeToken(body)
}

// sealToken encodes t as the sealed record stored under its id.
func (s *Store) sealToken(t *Token) ([]byte, error) { return s.sealTokenStamped(t, s.auditStamp()) }

// sealTokenStamped is sealToken stamped with the audit seq stamp: for a token written in the
// audit writer's transaction, with the record that seq names (records.go).
func (s *Store) sealTokenStamped(t *Token, stamp uint64) ([]byte, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	return sealWith(s.recMAC, tokensSlot(), []byte(t.ID), body, stamp)
}

// GetToken loads a token by id. ErrNotFound if absent.
func (s *Store) GetToken(id string) (Token, error) {
	var t Token
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketTokens).Get([]byte(id))
		if raw == nil {
			return fmt.Errorf("token %s: %w", id, ErrNotFound)
		}
		var err error
		t, err = s.openToken([]byte(id), raw)
		return err
	})
	s.coldRead() // brokerd reads a token here when its cache misses (mapped.go)
	return t, err
}

// ListTokens returns up to limit tokens with ids greater than after, in id order, keeping those
// keep accepts (nil keeps all), and the id to pass as after for the next page ("" when done).
func (s *Store) ListTokens(after string, limit int, keep func(*Token) bool) ([]Token, string, error) {
	var (
		out  []Token
		next string
	)
	defer s.trimMapped() // a page of up to a thousand records (mapped.go)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTokens).Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && bytes.Equal(k, []byte(after)) {
				k, v = c.Next()
			}
		}
		for ; k != nil; k, v = c.Next() {
			t, err := s.openToken(k, v)
			if err != nil {
				return fmt.Errorf("token %q: %w", k, err)
			}
			if keep != nil && !keep(&t) {
				continue
			}
			if len(out) == limit {
				next = out[len(out)-1].ID
				return nil
			}
			out = append(out, t)
		}
		return nil
	})
	return out, next, err
}

// ForEachToken calls fn for every stored token, in id order.
func (s *Store) ForEachToken(fn func(*Token) error) error {
	defer s.trimMapped() // the walk mapped the whole bucket (mapped.go)
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			t, err := s.openToken(k, v)
			if err != nil {
				return fmt.Errorf("token %q: %w", k, err)
			}
			return fn(&t)
		})
	})
}

// processBoundMarker is how json.Marshal writes Token.ProcessBound when it is set. A string field
// holding the same text is written with its quotes escaped, so it never matches.
var processBoundMarker = []byte(`"process_bound":true`)

// ForEachProcessBoundToken calls fn for every stored token bound to the process that fetched it
// (Token.ProcessBound), in id order. brokerd calls it at every start; it verifies and decodes only
// the records whose body holds processBoundMarker, where ForEachToken decoded all 100k tokens of a
// large database (most of a second). The records it skips were verified by Open's integrity check.
func (s *Store) ForEachProcessBoundToken(fn func(*Token) error) error {
	defer s.trimMapped() // the walk mapped the whole bucket (mapped.go)
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			if _, _, body, ok := splitSealed(v); ok && !bytes.Contains(body, processBoundMarker) {
				return nil
			}
			t, err := s.openToken(k, v)
			if err != nil {
				return fmt.Errorf("token %q: %w", k, err)
			}
			if !t.ProcessBound {
				return nil
			}
			return fn(&t)
		})
	})
}

// RevokeToken marks a token revoked (idempotent: a second revoke keeps the first time).
func (s *Store) RevokeToken(id string, now time.Time) (Token, error) {
	var t Token
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		t, _, err = s.revokeIn(tx, id, now, s.sealToken)
		return err
	})
	return t, err
}

// revokeIn marks token id revoked at now in tx, sealed by seal, and returns its record after;
// revoked is false (and nothing written) for a token already revoked.
func (s *Store) revokeIn(tx *bolt.Tx, id string, now time.Time, seal func(*Token) ([]byte, error)) (t Token, revoked bool, err error) {
	b := tx.Bucket(bucketTokens)
	raw := b.Get([]byte(id))
	if raw == nil {
		return Token{}, false, fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	if t, err = s.openToken([]byte(id), raw); err != nil || t.Revoked {
		return t, false, err
	}
	t.Revoked, t.RevokedAt = true, now.UTC()
	out, err := seal(&t)
	if err != nil {
		return t, false, err
	}
	return t, true, b.Put([]byte(id), out)
}

// RevokeTokenAudited revokes token id, as RevokeToken does, and appends rec, the audit record of
// the revocation, in the same transaction of the audit log's group commit: the revocation is never
// durable without its record. It returns the record after the revoke, and whether this call
// revoked it: a token already revoked is left as it is and rec is not written (the earlier
// revocation has its own record). ErrNotFound for an unknown id; ErrAuditUnavailable if the commit
// fails (nothing is written). It waits for the commit even if ctx ends.
func (s *Store) RevokeTokenAudited(ctx context.Context, id string, now time.Time, rec AuditRecord) (Token, bool, error) {
	var t Token
	err := s.appendAudit(context.WithoutCancel(ctx), &auditReq{rec: rec, done: make(chan error, 1),
		apply: func(tx *bolt.Tx, seq uint64) error {
			// Run again if another request of the batch fails: set t only from what is read.
			var revoked bool
			var err error
			t, revoked, err = s.revokeIn(tx, id, now, func(t *Token) ([]byte, error) { return s.sealTokenStamped(t, seq) })
			if err == nil && !revoked {
				return errAlreadyRevoked
			}
			return err
		}})
	if errors.Is(err, errAlreadyRevoked) {
		return t, false, nil
	}
	if err != nil {
		return Token{}, false, err
	}
	return t, true, nil
}

// errAlreadyRevoked leaves a revocation's record out of its commit (RevokeTokenAudited).
var errAlreadyRevoked = errors.New("token already revoked")

// UseToken durably counts one use of a use-limited token and returns the record after the count.
// ErrExhausted when the limit is already reached (nothing is written then). Concurrent callers are
// group-committed by bbolt's Batch: many uses share one fsync.
func (s *Store) UseToken(id string, now time.Time) (Token, error) {
	return s.changeToken(id, func(t *Token) (bool, error) {
		if t.MaxUses > 0 && t.Uses >= t.MaxUses {
			return false, fmt.Errorf("token %s: %w (%d of %d)", id, ErrExhausted, t.Uses, t.MaxUses)
		}
		t.Uses++
		t.LastUsedAt = now.UTC()
		return true, nil
	})
}

// UnuseToken gives back one use counted by UseToken, for a call that provably did not reach the
// upstream (refused by the broker, nothing sent, an error status answered it). A crash between the
// two leaves the use counted: uses err on the side of counting, never past MaxUses.
func (s *Store) UnuseToken(id string) (Token, error) {
	return s.changeToken(id, func(t *Token) (bool, error) {
		if t.Uses == 0 {
			return false, nil
		}
		t.Uses--
		return true, nil
	})
}

// changeToken applies change to token id's record in a batched write and returns the record after
// it. change reports whether it changed anything to write, or the caller's answer as an error
// (a refusal, which writes nothing and is not a failed transaction).
func (s *Store) changeToken(id string, change func(*Token) (bool, error)) (Token, error) {
	var (
		t      Token
		result error
	)
	// Batch may run fn more than once (after another fn in the batch fails, in a new transaction
	// over the rolled-back state), so fn only sets its outputs from what it reads: idempotent.
	err := s.batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		raw := b.Get([]byte(id))
		if raw == nil {
			result = fmt.Errorf("token %s: %w", id, ErrNotFound)
			return nil
		}
		var err error
		if t, err = s.openToken([]byte(id), raw); err != nil {
			result = err
			return nil
		}
		var write bool
		if write, result = change(&t); !write || result != nil {
			return nil
		}
		out, err := s.sealToken(&t)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), out)
	})
	if err != nil {
		return Token{}, err
	}
	return t, result
}

// CountTokens returns how many token records are stored, without decoding them.
func (s *Store) CountTokens() (int, error) {
	n := 0
	defer s.trimMapped() // Stats walks every page of the bucket (mapped.go)
	err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketTokens).Stats().KeyN
		return nil
	})
	return n, err
}
