package main

import (
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	cases := []struct {
		in      string
		n       uint32
		per     time.Duration
		wantErr bool
	}{
		{"10/m", 10, time.Minute, false},
		{"100/h", 100, time.Hour, false},
		{"5/30s", 5, 30 * time.Second, false},
		{"1000/d", 1000, 24 * time.Hour, false},
		{"0/m", 0, 0, true},
		{"10", 0, 0, true},
		{"x/m", 0, 0, true},
		{"10/fortnight", 0, 0, true},
		{"10/-1s", 0, 0, true},
	}
	for _, tc := range cases {
		n, per, err := parseRate(tc.in)
		if (err != nil) != tc.wantErr || n != tc.n || per != tc.per {
			t.Errorf("parseRate(%q) = %d, %s, %v", tc.in, n, per, err)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	if got, err := parseSince("1h", now); err != nil || !got.Equal(now.Add(-time.Hour)) {
		t.Fatalf("1h: %v %v", got, err)
	}
	if got, err := parseSince("2026-11-25T10:00:00Z", now); err != nil || got.Hour() != 10 {
		t.Fatalf("rfc3339: %v %v", got, err)
	}
	if _, err := parseSince("yesterday", now); err == nil {
		t.Fatal("accepted yesterday")
	}
}
