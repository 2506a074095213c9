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
