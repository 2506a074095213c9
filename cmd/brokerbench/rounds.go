package main

import (
	"fmt"
	"slices"
	"time"
)

// median is the median of xs (the mean of the two middle ones for an even count), 0 for none.
func median[T ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return s[m-1] + (s[m]-s[m-1])/2
}

// paired combines a and b round by round (a[i] with b[i]: the two modes ran in the same round,
// side by side, so whatever disturbed the machine then hit both) with f, which reports false for
// a round to leave out (see pairedBy). Unequal lengths pair nothing.
func paired[T ~int64 | ~float64](a, b []T, f func(x, y T) (T, bool)) (med, lo, hi T, n int) {
	if len(a) != len(b) {
		return 0, 0, 0, 0
	}
	return pairedBy(len(a), func(i int) (T, bool) { return f(a[i], b[i]) })
}

// pairedBy is f of each of rounds rounds, f reporting false for a round to leave out: the median
// of the results, their min and max, and how many rounds were kept. n is 0 when none was.
func pairedBy[T ~int64 | ~float64](rounds int, f func(i int) (T, bool)) (med, lo, hi T, n int) {
	var d []T
	for i := range rounds {
		if v, ok := f(i); ok {
			d = append(d, v)
		}
	}
	if len(d) == 0 {
		return 0, 0, 0, 0
	}
	return median(d), slices.Min(d), slices.Max(d), len(d)
}

// pairedDiff is a − b paired by round. A round in which either side completed no call (p50 0) is
// left out.
func pairedDiff(a, b []time.Duration) (med, lo, hi time.Duration, n int) {
	return paired(a, b, func(x, y time.Duration) (time.Duration, bool) { return x - y, x > 0 && y > 0 })
}

// roundsP50 is a cell's p50 of every round, or its own p50 when it ran once.
func roundsP50(c *cellResult) []time.Duration {
	if len(c.RoundsP50) > 0 {
		return c.RoundsP50
	}
	return []time.Duration{c.P50}
}

// roundOrder is the order modes run in round rd: as given in even rounds (brokerd right after the
// floor, as before the timed floors existed), and in odd rounds with brokerd moved after the last
// timed floor (floor+write, floor+commit), so that neither brokerd nor they always run right
// after the other (whatever one leaves behind on the machine, the other does not always meet it).
func roundOrder(modes []string, rd int) []string {
	j := slices.Index(modes, "brokerd")
	last := -1
	for i, m := range modes {
		if isTimed(m) {
			last = i
		}
	}
	if rd%2 == 0 || j < 0 || last < j {
		return modes
	}
	out := slices.Delete(slices.Clone(modes), j, j+1)
	return slices.Insert(out, last, "brokerd") // last moved down by one with brokerd's removal
}

// isTimed reports whether mode is a floor with one durable operation per call (timedModes).
func isTimed(mode string) bool {
	return slices.ContainsFunc(timedModes, func(t timedMode) bool { return t.mode == mode })
}

// cellModes is the modes a cell at delay and concurrency c runs: the timed floors only in the
// zero-delay c=1 cell, and only those started (started reports whether one was).
func cellModes(modes []string, started func(mode string) bool, delay time.Duration, c int) []string {
	return slices.DeleteFunc(slices.Clone(modes), func(m string) bool {
		return isTimed(m) && (!started(m) || delay != 0 || c != 1)
	})
}

// nonZero is xs without its zeros (rounds that measured nothing).
func nonZero(xs []time.Duration) []time.Duration {
	return slices.DeleteFunc(slices.Clone(xs), func(x time.Duration) bool { return x == 0 })
}

// roundsOpP50 is a floor+write or floor+commit cell's in-server operation p50 of every
// round, or its own when it ran once.
func roundsOpP50(c *cellResult) []time.Duration {
	if len(c.RoundsOpP50) > 0 {
		return c.RoundsOpP50
	}
	return []time.Duration{c.OpP50}
}

// overOwnOp is brokerd's p50 over the floor's, less fc's own operation p50 (floor+write's
// write or floor+commit's commit), paired by round (the median of the per-round values, and how
// many rounds had all three).
func overOwnOp(b, f, fc *cellResult) (med time.Duration, n int) {
	bp, fp, cp := roundsP50(b), roundsP50(f), roundsOpP50(fc)
	if len(bp) != len(fp) || len(cp) != len(fp) {
		return 0, 0
	}
	med, _, _, n = pairedBy(len(bp), func(i int) (time.Duration, bool) {
		return bp[i] - fp[i] - cp[i], bp[i] > 0 && fp[i] > 0 && cp[i] > 0
	})
	return med, n
}

// p50Over is brokerd's p50 over the floor's, paired by round (see pairedDiff).
func p50Over(b, f *cellResult) (med, lo, hi time.Duration, n int) {
	return pairedDiff(roundsP50(b), roundsP50(f))
}

// pairedRatio is a / b paired by round (rounds where b is 0 are left out).
func pairedRatio(a, b []float64) (med, lo, hi float64, n int) {
	return paired(a, b, func(x, y float64) (float64, bool) { return x / y, y > 0 })
}

// roundsNote is " (paired by round: med, lo … hi)" for a's req/s over b's when both ran in
// several rounds: the ratio targets compare each mode's median round, which may come from
// different rounds; this says how much the pairing moves them.
func roundsNote(a, b *cellResult) string {
	med, lo, hi, n := pairedRatio(a.RoundsRPS, b.RoundsRPS)
	if n < 2 {
		return ""
	}
	return fmt.Sprintf("; paired by round: %.2f (%.2f … %.2f, %d rounds)", med, lo, hi, n)
}
