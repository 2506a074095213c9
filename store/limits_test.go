package store

import (
	"errors"
	"testing"
	"time"
)

func TestSpendWindow(t *testing.T) {
	tests := []struct {
		name           string
		stored, window string
		spent          uint64
		credits        int64
		win            string
		base           uint64
		skip           bool
	}{
		{"same period", "2026-11", "2026-11", 5, 2, "2026-11", 5, false},
		{"same period refund", "2026-11", "2026-11", 5, -2, "2026-11", 5, false},
		{"new period starts at zero", "2026-11", "2026-12", 5, 2, "2026-12", 0, false},
		{"first spend ever", "", "2026-11", 0, 1, "2026-11", 0, false},
		{"late spend counts now", "2026-12", "2026-11", 5, 2, "2026-12", 5, false},
		{"late refund dropped", "2026-12", "2026-11", 5, -2, "2026-12", 5, true},
		{"refund for a future period dropped", "2026-11", "2026-12", 5, -2, "2026-11", 5, true},
		{"day windows", "2026-11-26", "2026-11-27", 3, 1, "2026-11-27", 0, false},
	}
	for _, tc := range tests {
		win, base, skip := spendWindow(tc.stored, tc.window, tc.spent, tc.credits)
		if win != tc.win || base != tc.base || skip != tc.skip {
			t.Errorf("%s: spendWindow(%q, %q, %d, %d) = %q, %d, %v; want %q, %d, %v",
				tc.name, tc.stored, tc.window, tc.spent, tc.credits, win, base, skip, tc.win, tc.base, tc.skip)
		}
	}
}

// A credential's monthly ceiling at the turn of the month: a refund of a call charged in
// November must not reset December's count.
func TestCredentialCreditsLateRefund(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.PutCredential("scavio_api_key", []byte("sk_test"), t0); err != nil {
		t.Fatal(err)
	}
	nov := time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC)
	dec := nov.Add(2 * time.Second)
	if _, err := s.SpendCredentialCredits("scavio_api_key", nov, 1, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SpendCredentialCredits("scavio_api_key", dec, 3, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SpendCredentialCredits("scavio_api_key", nov, -1, 3); err != nil { // the November call's refund
		t.Fatal(err)
	}
	if _, err := s.SpendCredentialCredits("scavio_api_key", dec, 1, 3); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("December's ceiling after November's late refund: %v, want exhausted", err)
	}
}

// Credits the upstream already charged are recorded whole, even past the budget or ceiling (an
// overshoot), and further spends are refused until the period resets.
func TestSettleRecordsOvershoot(t *testing.T) {
	s, _, _ := openStore(t)
	if _, err := s.PutCredential("scavio_api_key", []byte("sk_test"), t0); err != nil {
		t.Fatal(err)
	}
	tok := testToken("tok1", 0)
	tok.BudgetCredits, tok.BudgetPeriod = 10, "day"
	if err := s.PutToken(tok); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if _, err := s.SpendTokenBudget("tok1", now, 1); err != nil {
		t.Fatal(err)
	}
	got, err := s.SettleTokenBudget("tok1", now, 49) // the upstream said 50, 1 was charged up front
	if err != nil || got.BudgetSpent != 50 {
		t.Fatalf("settle past the budget: spent %d, %v; want 50", got.BudgetSpent, err)
	}
	if _, err := s.SpendTokenBudget("tok1", now, 1); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("spend after an overshoot: %v, want exhausted", err)
	}
	if got, err := s.SpendTokenBudget("tok1", now.Add(24*time.Hour), 1); err != nil || got.BudgetSpent != 1 {
		t.Fatalf("next day: spent %d, %v; want a fresh budget", got.BudgetSpent, err)
	}

	if _, err := s.SpendCredentialCredits("scavio_api_key", now, 1, 3); err != nil {
		t.Fatal(err)
	}
	if spent, err := s.SettleCredentialCredits("scavio_api_key", now, 9); err != nil || spent != 10 {
		t.Fatalf("settle past the ceiling: %d, %v; want 10", spent, err)
	}
	if _, err := s.SpendCredentialCredits("scavio_api_key", now, 1, 3); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("spend after a ceiling overshoot: %v, want exhausted", err)
	}
}

// A use given back (the call never reached the upstream) can be used again; never below zero.
func TestUnuseToken(t *testing.T) {
	s, _, _ := openStore(t)
	if err := s.PutToken(testToken("tok1", 1)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.UnuseToken("tok1"); err != nil || got.Uses != 0 {
		t.Fatalf("unuse of an unused token: %d, %v", got.Uses, err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if _, err := s.UseToken("tok1", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseToken("tok1", now); !errors.Is(err, ErrExhausted) {
		t.Fatalf("second use of a 1-use token: %v", err)
	}
	if got, err := s.UnuseToken("tok1"); err != nil || got.Uses != 0 {
		t.Fatalf("unuse: %d, %v", got.Uses, err)
	}
	if _, err := s.UseToken("tok1", now); err != nil {
		t.Fatalf("use after a use was given back: %v", err)
	}
}
