// Package days parses the durations operators write for retention and ages: Go durations plus a
// leading day count ("30d", "1d12h", "720h", "0"). time.ParseDuration has no day unit.
package days

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Parse reads s as [Nd][Go duration]. Negative durations are refused.
func Parse(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not a duration; use e.g. 30d, 12h or 1d12h", s)
	if s == "" {
		return 0, bad
	}
	var d time.Duration
	rest := s
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil {
			return 0, bad
		}
		d = time.Duration(n) * 24 * time.Hour
		rest = s[i+1:]
	}
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, bad
		}
		d += r
	}
	return d, nil
}

// Format renders d the way Parse reads it: "30d", "1d12h", "5h30m", "45s", "0s".
func Format(d time.Duration) string {
	if d <= 0 {
		return d.String()
	}
	n := d / (24 * time.Hour)
	rest := d % (24 * time.Hour)
	switch {
	case n == 0:
		return Compact(rest)
	case rest == 0:
		return fmt.Sprintf("%dd", n)
	}
	return fmt.Sprintf("%dd%s", n, Compact(rest))
}

// Compact is d.String() without trailing zero units: "12h" for 12h0m0s, "5h30m" for 5h30m0s.
func Compact(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Value is a flag value (pflag.Value) holding a duration written with Parse's syntax.
type Value struct{ D *time.Duration }

func (v Value) String() string {
	if v.D == nil {
		return ""
	}
	return Format(*v.D)
}

// Set implements pflag.Value.
func (v Value) Set(s string) error {
	d, err := Parse(s)
	if err != nil {
		return err
	}
	*v.D = d
	return nil
}

// Type implements pflag.Value.
func (Value) Type() string { return "duration" }
