package main

import (
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestParseBudget(t *testing.T) {
	cases := []struct {
		in     string
		n      uint64
		period string
		ok     bool
	}{
		{"100/d", 100, "day", true}, {"5/day", 5, "day", true}, {"1000/m", 1000, "month", true},
		{"0/d", 0, "", false}, {"10/w", 0, "", false}, {"x/d", 0, "", false}, {"10", 0, "", false},
	}
	for _, tc := range cases {
		n, p, err := parseBudget(tc.in)
		if (err == nil) != tc.ok || n != tc.n || p != tc.period {
			t.Errorf("parseBudget(%q) = %d %q %v", tc.in, n, p, err)
		}
	}
}

// Only the limit flags given change; the rest of the current limits stay.
func TestLimitFlagsMerge(t *testing.T) {
	cur := &credbrokerv1.CredentialLimits{RateLimit: 10, RatePeriod: durationpb.New(time.Minute), Burst: 2, MonthlyCredits: 1000}
	run := func(args ...string) (*credbrokerv1.CredentialLimits, error) {
		var l limitFlags
		cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
		l.register(cmd)
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		return l.apply(cmd, cur)
	}
	got, err := run("--monthly-credits", "500")
	if err != nil || got.RateLimit != 10 || got.Burst != 2 || got.MonthlyCredits != 500 {
		t.Fatalf("monthly only: %v %v", got, err)
	}
	got, _ = run("--rate", "5/s", "--max-wait", "3s")
	if got.RateLimit != 5 || got.RatePeriod.AsDuration() != time.Second || got.MaxWait.AsDuration() != 3*time.Second || got.MonthlyCredits != 1000 {
		t.Fatalf("rate: %v", got)
	}
	got, _ = run("--rate", "0")
	if got.RateLimit != 0 || got.RatePeriod != nil || got.Burst != 0 || got.MonthlyCredits != 1000 {
		t.Fatalf("rate 0: %v", got)
	}
	if got, err := run("--clear-limits"); err != nil || got != nil {
		t.Fatalf("clear: %v %v", got, err)
	}
	if _, err := run("--clear-limits", "--burst", "3"); err == nil {
		t.Fatal("--clear-limits with --burst accepted")
	}
	if _, err := run("--max-wait", "soon"); err == nil {
		t.Fatal("bad --max-wait accepted")
	}
}
