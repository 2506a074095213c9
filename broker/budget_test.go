package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/credbroker/credbroker/store"
)

// A call charged just before midnight UTC and refunded after it (it failed, or its caller gave up)
// must not reset the new day's budget: otherwise a token holder could spend a day's budget twice.
// The same holds for a credential's monthly ceiling at the turn of a month.
func TestLateRefundDoesNotResetTheNewPeriod(t *testing.T) {
	b, clk := newCacheBroker(t, 16) // 2026-11-26 12:00 UTC
	_, rec := mintFor(t, b, MintRequest{BudgetCredits: 2, BudgetPeriod: "day"})
	tool, _ := LookupTool("web_search")
	if _, err := b.SetLimits(context.Background(), tool.Credential, store.Limits{MonthlyCredits: 1000}); err != nil {
		t.Fatal(err)
	}
	cs, err := b.spendingFor(tool.Credential)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(12*time.Hour - time.Second)
	refund, err := b.charge(&rec, tool, cs, 1, clk.Now()) // 23:59:59, the call is in flight
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second) // a new day
	if _, err := b.charge(&rec, tool, cs, 2, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.charge(&rec, tool, cs, 1, clk.Now()); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("third credit of a 2/day budget: %v, want refused", err)
	}
	refund() // the pre-midnight call fails now
	if _, err := b.charge(&rec, tool, cs, 1, clk.Now()); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("after yesterday's late refund the budget took another credit today: %v", err)
	}
	tok, err := b.store.GetToken(rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.BudgetWindow != store.DayWindow(clk.Now()) || tok.BudgetSpent != 2 {
		t.Fatalf("budget record after the late refund: window %s spent %d, want today with 2", tok.BudgetWindow, tok.BudgetSpent)
	}
}
