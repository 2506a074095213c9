package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Spending limits and credit counters. A credential's limits live at credentials/<name>/limits and
// its monthly credit counter at credentials/<name>/credits (only written while a monthly ceiling is
// set); a token's budget counter lives in its token record.

var (
	keyLimits  = []byte("limits")
	keyCredits = []byte("credits")
)

// ErrBudgetExhausted reports a token budget or credential ceiling that a call would exceed.
var ErrBudgetExhausted = errors.New("credit budget exhausted")

// Limits bound how fast and how much a credential is spent, across all tokens.
type Limits struct {
	RateLimit      uint32        `json:"rate_limit,omitempty"`
	RatePeriod     time.Duration `json:"rate_period,omitempty"`
	Burst          uint32        `json:"burst,omitempty"`
	MaxWait        time.Duration `json:"max_wait,omitempty"`
	MonthlyCredits uint64        `json:"monthly_credits,omitempty"`
}

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

type creditCounter struct {
	Window string `json:"window"`
	Spent  uint64 `json:"spent"`
}

// MonthWindow and DayWindow name the UTC calendar period t falls in.
func MonthWindow(t time.Time) string { return t.UTC().Format("2006-01") }

// DayWindow names the UTC day t falls in.
func DayWindow(t time.Time) string { return t.UTC().Format("2006-01-02") }

func (s *Store) readLimits(b *bolt.Bucket, name string, c *Credential) error {
	raw, err := s.getRecord(b, credentialSlot(name), keyLimits)
	if err != nil {
		return err
	}
	if raw != nil {
		var l Limits
		if err := json.Unmarshal(raw, &l); err != nil {
			return fmt.Errorf("credential %q: %w: bad limits", name, ErrCorrupt)
		}
		c.Limits = &l
	}
	if raw, err = s.getRecord(b, credentialSlot(name), keyCredits); err != nil {
		return err
	}
	if raw != nil {
		var cc creditCounter
		if err := json.Unmarshal(raw, &cc); err != nil {
			return fmt.Errorf("credential %q: %w: bad credit counter", name, ErrCorrupt)
		}
		if cc.Window == MonthWindow(time.Now()) {
			c.CreditsThisMonth = cc.Spent
		}
	}
	return nil
}

// SetLimits stores l as name's limits (a zero l removes them). ErrNotFound if name is absent.
func (s *Store) SetLimits(name string, l Limits) (Credential, error) {
	var out Credential
	err := s.update(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			return err
		}
		if l.IsZero() {
			if err := b.Delete(keyLimits); err != nil {
				return err
			}
		} else {
			if err := s.putRecord(b, credentialSlot(name), keyLimits, l); err != nil {
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

// SpendCredentialCredits adds credits (negative: a refund) to name's counter for the month of now
// (see spendWindow for spends dated in another month than the counter's),
// refusing with ErrBudgetExhausted when a positive spend would pass ceiling. Concurrent spends are
// group-committed.
func (s *Store) SpendCredentialCredits(name string, now time.Time, credits int64, ceiling uint64) (spent uint64, err error) {
	return s.spendCredentialCredits(name, now, credits, ceiling, true)
}

// SettleCredentialCredits records credits the upstream already charged (negative: a refund) on
// name's counter for the month of now, like SpendCredentialCredits but never refused: the count
// may pass the ceiling (an overshoot), and spends are then refused until the month ends.
func (s *Store) SettleCredentialCredits(name string, now time.Time, credits int64) (spent uint64, err error) {
	return s.spendCredentialCredits(name, now, credits, 0, false)
}

func (s *Store) spendCredentialCredits(name string, now time.Time, credits int64, ceiling uint64, enforce bool) (spent uint64, err error) {
	if !enforce {
		ceiling = 0
	}
	var result error
	window := MonthWindow(now)
	err = s.batch(func(tx *bolt.Tx) error {
		b, err := credentialBucket(tx, name)
		if err != nil {
			result = err
			return nil
		}
		var cc creditCounter
		raw, err := s.getRecord(b, credentialSlot(name), keyCredits)
		if err != nil {
			result = err
			return nil
		}
		if raw != nil {
			if err := json.Unmarshal(raw, &cc); err != nil {
				result = fmt.Errorf("credential %q: %w: bad credit counter", name, ErrCorrupt)
				return nil
			}
		}
		win, base, skip := spendWindow(cc.Window, window, cc.Spent, credits)
		if skip {
			spent, result = cc.Spent, nil
			return nil
		}
		cc.Window, cc.Spent = win, base
		next, ok := addCredits(cc.Spent, credits, ceiling)
		if !ok {
			spent, result = cc.Spent, fmt.Errorf("credential %q: %w: %d of %d credits used this month", name, ErrBudgetExhausted, cc.Spent, ceiling)
			return nil
		}
		cc.Spent, spent, result = next, next, nil
		return s.putRecord(b, credentialSlot(name), keyCredits, cc)
	})
	if err != nil {
		return 0, err
	}
	return spent, result
}

// addCredits applies delta to spent, refusing a positive delta that passes ceiling (0: none).
// spendWindow decides which period a spend dated in window lands in, given the stored period and
// its count. Windows are "2006-01-02" or "2006-01" strings, so they order as text. A later window
// starts a new period from zero. A spend (credits > 0) dated in an older window than the stored
// one counts against the stored, current period. A refund (credits < 0) for any other window than
// the stored one is dropped (skip): a call charged before midnight and refunded after it must not
// reset or eat into the new period's count.
func spendWindow(stored, window string, spent uint64, credits int64) (win string, base uint64, skip bool) {
	switch {
	case window == stored:
		return stored, spent, false
	case credits < 0:
		return stored, spent, true
	case window > stored:
		return window, 0, false
	default:
		return stored, spent, false
	}
}

func addCredits(spent uint64, delta int64, ceiling uint64) (uint64, bool) {
	if delta < 0 {
		if uint64(-delta) > spent {
			return 0, true
		}
		return spent - uint64(-delta), true
	}
	next := spent + uint64(delta)
	if ceiling > 0 && next > ceiling {
		return spent, false
	}
	return next, true
}

// SpendTokenBudget adds credits (negative: a refund) to a token's budget for the period of now
// (see spendWindow for spends dated in another period than the stored one),
// refusing with ErrBudgetExhausted past the budget. It returns the token record after the write.
func (s *Store) SpendTokenBudget(id string, now time.Time, credits int64) (Token, error) {
	return s.spendTokenBudget(id, now, credits, true)
}

// SettleTokenBudget records credits the upstream already charged (negative: a refund) on a
// token's budget for the period of now, like SpendTokenBudget but never refused: the count may
// pass the budget (an overshoot), and spends are then refused until the period resets.
func (s *Store) SettleTokenBudget(id string, now time.Time, credits int64) (Token, error) {
	return s.spendTokenBudget(id, now, credits, false)
}

func (s *Store) spendTokenBudget(id string, now time.Time, credits int64, enforce bool) (Token, error) {
	return s.changeToken(id, func(t *Token) (bool, error) {
		if t.BudgetCredits == 0 {
			return false, nil
		}
		window := DayWindow(now)
		if t.BudgetPeriod == "month" {
			window = MonthWindow(now)
		}
		win, base, skip := spendWindow(t.BudgetWindow, window, t.BudgetSpent, credits)
		if skip {
			return false, nil
		}
		t.BudgetWindow, t.BudgetSpent = win, base
		ceiling := t.BudgetCredits
		if !enforce {
			ceiling = 0
		}
		next, ok := addCredits(t.BudgetSpent, credits, ceiling)
		if !ok {
			return false, fmt.Errorf("token %s: %w", id, ErrBudgetExhausted)
		}
		t.BudgetSpent = next
		return true, nil
	})
}
