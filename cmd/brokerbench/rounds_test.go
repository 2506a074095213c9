package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

const us1 = time.Microsecond

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want time.Duration
	}{
		{"none", nil, 0},
		{"one", []time.Duration{7}, 7},
		{"odd, unsorted", []time.Duration{300, 100, 200}, 200},
		{"even: mean of the middle two", []time.Duration{400, 100, 300, 200}, 250},
		{"negative differences", []time.Duration{-50, 20, -10}, -10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			if got := median(tc.in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("median reordered its input: %v", tc.in)
			}
		})
	}
}

func TestPairedDiff(t *testing.T) {
	for _, tc := range []struct {
		name        string
		a, b        []time.Duration
		med, lo, hi time.Duration
		n           int
	}{
		{"one round", []time.Duration{900}, []time.Duration{500}, 400, 400, 400, 1},
		// Per-round differences 400, 100, 700: the median is 400, whereas the difference of the
		// medians of each side (1000 − 700) would be 300.
		{"paired by round, not median of each side", []time.Duration{1000, 800, 1500}, []time.Duration{600, 700, 800}, 400, 100, 700, 3},
		{"even count", []time.Duration{1000, 1100}, []time.Duration{800, 800}, 250, 200, 300, 2},
		{"a round without calls is left out", []time.Duration{1000, 0, 1200}, []time.Duration{600, 700, 0}, 400, 400, 400, 1},
		{"brokerd faster in a round", []time.Duration{500, 900, 1000}, []time.Duration{600, 600, 600}, 300, -100, 400, 3},
		{"nothing to pair", []time.Duration{0}, []time.Duration{600}, 0, 0, 0, 0},
		{"rounds of different length", []time.Duration{1, 2}, []time.Duration{1}, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			med, lo, hi, n := pairedDiff(tc.a, tc.b)
			if med != tc.med || lo != tc.lo || hi != tc.hi || n != tc.n {
				t.Errorf("pairedDiff = %v, %v, %v, %d; want %v, %v, %v, %d", med, lo, hi, n, tc.med, tc.lo, tc.hi, tc.n)
			}
		})
	}
}

func TestMedianCellKeepsEveryRound(t *testing.T) {
	rounds := []cellResult{
		{Mode: modeFloorCommit, loadResult: loadResult{RPS: 900, P50: 700 * us1, OpP50: 3}},
		{Mode: modeFloorCommit, loadResult: loadResult{RPS: 1500, P50: 500 * us1, OpP50: 1}},
		{Mode: modeFloorCommit, loadResult: loadResult{RPS: 1200, P50: 600 * us1, OpP50: 0}},
	}
	m := medianCell(rounds)
	if m.RPS != 1200 || m.P50 != 600*us1 {
		t.Errorf("median round = %.0f req/s p50 %v, want the 1200 req/s one", m.RPS, m.P50)
	}
	// Run order, so that index i of two modes is the same round.
	if want := []float64{900, 1500, 1200}; !slices.Equal(m.RoundsRPS, want) {
		t.Errorf("RoundsRPS = %v, want %v", m.RoundsRPS, want)
	}
	if want := []time.Duration{700 * us1, 500 * us1, 600 * us1}; !slices.Equal(m.RoundsP50, want) {
		t.Errorf("RoundsP50 = %v, want %v", m.RoundsP50, want)
	}
	if want := []time.Duration{3, 1, 0}; !slices.Equal(m.RoundsOpP50, want) {
		t.Errorf("RoundsOpP50 = %v, want %v", m.RoundsOpP50, want)
	}
	if one := medianCell(rounds[:1]); one.RoundsP50 != nil || one.RoundsRPS != nil {
		t.Errorf("a single round lists rounds: %v %v", one.RoundsRPS, one.RoundsP50)
	}
}

func TestC1Target(t *testing.T) {
	cell := func(mode string, rps float64, p50 time.Duration, rounds ...time.Duration) cellResult {
		return cellResult{Mode: mode, Conc: 1, RoundsP50: rounds, loadResult: loadResult{Requests: 1000, RPS: rps, P50: p50}}
	}
	yard := &c1Disk{diskRound: diskRound{Pace: 1300 * us1, CommitPaced: 400 * us1, CommitB2B: 200 * us1, WritePaced: 160 * us1, WriteB2B: 55 * us1}, Rounds: make([]diskRound, 3)}
	for _, tc := range []struct {
		name       string
		cells      []cellResult
		yard       *c1Disk
		backToBack time.Duration // r.Disk.CommitP50, measured before the runs
		status     string
		want, got  []string // substrings of the target's Want and Got
	}{
		{
			name: "over a back-to-back commit but within one at c=1's pace",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 650*us1, 700*us1),
				cell("brokerd", 1000, 950*us1, 950*us1, 1000*us1, 1100*us1),
			},
			yard: yard, backToBack: 150 * us1, status: "PASS",
			want: []string{"≤ one bbolt commit at c=1's pace", "back to back: 200µs"},
			got:  []string{"350µs: median of 3 rounds' differences, range 350µs … 400µs", "p50 400µs, back to back 200µs", "160µs paced, 55µs back to back"},
		},
		{
			// The median rounds by req/s differ by 150 µs, the rounds paired by 450 µs: the
			// paired median decides.
			name: "paired median, not the median rounds' difference",
			cells: []cellResult{
				cell("floor", 1500, 800*us1, 500*us1, 800*us1, 550*us1),
				cell("brokerd", 1000, 950*us1, 950*us1, 1250*us1, 1000*us1),
			},
			yard: yard, status: "MISS",
			got: []string{"450µs: median of 3 rounds' differences, range 450µs … 450µs", "median rounds by req/s: 950µs vs 800µs"},
		},
		{
			name: "one round",
			cells: []cellResult{
				cell("floor", 1500, 600*us1),
				cell("brokerd", 1000, 1000*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"400µs (1ms vs 600µs)"},
		},
		{
			name: "without a paced yardstick: the back-to-back commit before the runs",
			cells: []cellResult{
				cell("floor", 1500, 600*us1),
				cell("brokerd", 1000, 1000*us1),
			},
			backToBack: 300 * us1, status: "MISS",
			want: []string{"≤ one bbolt commit"},
			got:  []string{"one bbolt commit p50 300µs (back to back, before the runs)"},
		},
		{
			// floor+commit is reported for scale; the paced commit alone still decides:
			// brokerd − floor (500 µs) is over it (400 µs) though under floor+commit.
			name: "floor+commit ran: shown for scale, the paced commit decides",
			cells: []cellResult{
				cell("floor", 1500, 650*us1, 600*us1, 650*us1, 700*us1),
				withOps(cell(modeFloorCommit, 900, 1200*us1, 1150*us1, 1200*us1, 1250*us1), 300*us1, 320*us1, 310*us1),
				cell("brokerd", 1000, 1150*us1, 1100*us1, 1250*us1, 1200*us1),
			},
			yard: yard, status: "MISS",
			want: []string{"≤ one bbolt commit at c=1's pace"},
			got: []string{"500µs: median of 3 rounds' differences", "one bbolt commit at c=1's pace (one every 1.3ms) p50 400µs",
				"for scale, the yardstick's commit inside a server (floor+commit: the floor with one per call): its own p50 there 310µs (brokerd − floor − it, paired by round: 200µs)",
				"floor+commit − floor 550µs (550µs … 550µs)", "brokerd − floor+commit -50µs (-50µs … 50µs, 3 rounds)"},
		},
		{
			name: "floor+commit ran, brokerd within the paced commit",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 600*us1, 600*us1),
				withOps(cell(modeFloorCommit, 1100, 850*us1, 850*us1, 850*us1, 850*us1), 200*us1, 0, 200*us1),
				cell("brokerd", 1000, 900*us1, 900*us1, 900*us1, 900*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"300µs: median of 3 rounds' differences", "its own p50 there 200µs (brokerd − floor − it, paired by round: 100µs)", "brokerd − floor+commit 50µs"},
		},
		{
			name: "floor+write ran too",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 600*us1, 600*us1),
				withOps(cell(modeFloorWrite, 1200, 750*us1, 750*us1, 760*us1, 740*us1), 110*us1, 120*us1, 100*us1),
				cell("brokerd", 1000, 900*us1, 900*us1, 900*us1, 900*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"for scale, brokerd's durable write inside a server (floor+write: the floor with one per call): its own p50 there 110µs (brokerd − floor − it, paired by round: 190µs), floor+write − floor 150µs (140µs … 160µs), brokerd − floor+write 150µs (140µs … 160µs, 3 rounds)"},
		},
		{
			name: "both ran: floor+write's note first",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 600*us1, 600*us1),
				withOps(cell(modeFloorWrite, 1200, 750*us1, 750*us1, 750*us1, 750*us1), 100*us1, 100*us1, 100*us1),
				withOps(cell(modeFloorCommit, 1100, 850*us1, 850*us1, 850*us1, 850*us1), 200*us1, 200*us1, 200*us1),
				cell("brokerd", 1000, 900*us1, 900*us1, 900*us1, 900*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"brokerd − floor+write 150µs (150µs … 150µs, 3 rounds); for scale, the yardstick's commit inside a server (floor+commit: the floor with one per call): its own p50 there 200µs"},
		},
		{
			name: "floor+write completed no call",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 600*us1, 600*us1),
				{Mode: modeFloorWrite, Conc: 1},
				cell("brokerd", 1000, 900*us1, 900*us1, 900*us1, 900*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"for scale, floor+write completed no call"},
		},
		{
			name: "floor+commit completed no call",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 600*us1, 600*us1),
				{Mode: modeFloorCommit, Conc: 1},
				cell("brokerd", 1000, 900*us1, 900*us1, 900*us1, 900*us1),
			},
			yard: yard, status: "PASS",
			got: []string{"for scale, floor+commit completed no call"},
		},
		{
			name: "no round with calls in both modes",
			cells: []cellResult{
				cell("floor", 1500, 600*us1, 600*us1, 0),
				cell("brokerd", 1000, 1000*us1, 0, 1000*us1),
			},
			yard: yard, status: "n/a",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &report{Cells: tc.cells, C1Disk: tc.yard, Disk: diskInfo{CommitP50: tc.backToBack}}
			var got *target
			for _, tg := range evaluate(r) {
				if tg.Name == "p50 brokerd − floor, zero delay, c=1" {
					got = &tg
				}
			}
			if got == nil {
				t.Fatal("evaluate made no c=1 latency target")
			}
			if got.Status != tc.status {
				t.Errorf("status %s, want %s (want %q, got %q)", got.Status, tc.status, got.Want, got.Got)
			}
			for _, s := range tc.want {
				if !strings.Contains(got.Want, s) {
					t.Errorf("want column %q lacks %q", got.Want, s)
				}
			}
			for _, s := range tc.got {
				if !strings.Contains(got.Got, s) {
					t.Errorf("measured column %q lacks %q", got.Got, s)
				}
			}
		})
	}
}

// withOps sets a timed floor cell's in-server operation p50 of each round.
func withOps(c cellResult, rounds ...time.Duration) cellResult {
	c.RoundsOpP50 = rounds
	c.OpP50 = median(rounds)
	return c
}

func TestC1DiskSummarize(t *testing.T) {
	y := &c1Disk{Rounds: []diskRound{
		{Pace: 1000, Period: 1010, CommitB2B: 200, CommitPaced: 400, WriteB2B: 50, WritePaced: 150},
		{Pace: 1400, Period: 1390, CommitB2B: 150, CommitPaced: 700, WriteB2B: 60, WritePaced: 170},
		{Pace: 1200, Period: 1250, CommitB2B: 300, CommitPaced: 350, WriteB2B: 90, WritePaced: 160},
	}}
	y.summarize()
	want := diskRound{Pace: 1200, Period: 1250, CommitB2B: 200, CommitPaced: 400, WriteB2B: 60, WritePaced: 160}
	if y.diskRound != want {
		t.Errorf("medians %+v, want %+v", y.diskRound, want)
	}
}

// TestDiskProbe runs the yardstick's loops on a real bbolt file and a real preallocated file (few
// samples; nothing about their speed is asserted) and checks that it cleans up after itself.
func TestDiskProbe(t *testing.T) {
	dir := t.TempDir()
	p, err := openDiskProbe(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, pace := range []time.Duration{0, 200 * us1} {
		r, err := p.measure(pace, 5)
		if err != nil {
			t.Fatalf("measure(%v): %v", pace, err)
		}
		if r.Pace != pace || r.CommitB2B <= 0 || r.CommitPaced <= 0 || r.WriteB2B <= 0 || r.WritePaced <= 0 || r.Period <= 0 {
			t.Errorf("measure(%v) = %+v, want every p50 and the period measured", pace, r)
		}
	}
	if p.seq != 20 || p.writes != 20 {
		t.Errorf("%d commits and %d writes, want 20 of each", p.seq, p.writes)
	}
	p.close()
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("probe left %d files in the work dir", len(left))
	}
}

func TestPairedRatio(t *testing.T) {
	for _, tc := range []struct {
		name        string
		a, b        []float64
		med, lo, hi float64
		n           int
	}{
		{"odd", []float64{4371, 5238, 4997, 3970, 3984}, []float64{6570, 6119, 6740, 5891, 4632}, 4997.0 / 6740, 4371.0 / 6570, 3984.0 / 4632, 5},
		{"even", []float64{1, 3}, []float64{2, 2}, 1, 0.5, 1.5, 2},
		{"a round without calls is left out", []float64{1, 5}, []float64{2, 0}, 0.5, 0.5, 0.5, 1},
		{"unequal", []float64{1}, []float64{1, 2}, 0, 0, 0, 0},
		{"none", nil, nil, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			med, lo, hi, n := pairedRatio(tc.a, tc.b)
			if med != tc.med || lo != tc.lo || hi != tc.hi || n != tc.n {
				t.Errorf("pairedRatio = %v %v %v %d, want %v %v %v %d", med, lo, hi, n, tc.med, tc.lo, tc.hi, tc.n)
			}
		})
	}
	one := &cellResult{RoundsRPS: []float64{1}}
	if got := roundsNote(one, one); got != "" {
		t.Errorf("one round: %q, want nothing", got)
	}
	if got := roundsNote(&cellResult{RoundsRPS: []float64{3, 4}}, &cellResult{RoundsRPS: []float64{4, 4}}); got != "; paired by round: 0.88 (0.75 … 1.00, 2 rounds)" {
		t.Errorf("two rounds: %q", got)
	}
}

// TestWriteC1Rounds checks the round-by-round table: floor+commit's columns when it ran in every
// round (a dash otherwise), and the verdict's two figures in bold, not floor+commit's.
func TestWriteC1Rounds(t *testing.T) {
	yard := &c1Disk{diskRound: diskRound{Pace: 600 * us1, CommitPaced: 250 * us1, CommitB2B: 200 * us1}, Rounds: []diskRound{
		{Pace: 600 * us1, CommitPaced: 240 * us1}, {Pace: 610 * us1, CommitPaced: 260 * us1},
	}}
	floor := cellResult{Mode: "floor", Conc: 1, RoundsP50: []time.Duration{500 * us1, 600 * us1}, loadResult: loadResult{Requests: 1, P50: 500 * us1}}
	brokerd := cellResult{Mode: "brokerd", Conc: 1, RoundsP50: []time.Duration{800 * us1, 850 * us1}, loadResult: loadResult{Requests: 1, P50: 800 * us1}}
	fc := withOps(cellResult{Mode: modeFloorCommit, Conc: 1, RoundsP50: []time.Duration{900 * us1, 880 * us1}, loadResult: loadResult{Requests: 1, P50: 900 * us1}},
		300*us1, 0)
	for _, tc := range []struct {
		name      string
		cells     []cellResult
		want, not []string
	}{
		{
			name:  "with floor+commit",
			cells: []cellResult{floor, fc, brokerd},
			want: []string{
				"| 1 | 500 | 800 | 300 | 900 | 400 | 300 | -100 | 600 | 240 |",
				"| 2 | 600 | 850 | 250 | 880 | 280 | 0 | -30 | 610 | 260 |",
				"| median | | | **275** (250 … 300, 2 round(s)) | | 340 (280 … 400) | 300 | -65 (-100 … -30) | 600 | **250** |",
			},
			not: []string{"**340", "**300", "**-65", "floor+write"},
		},
		{
			name: "with floor+write too: its columns come first",
			cells: []cellResult{floor, brokerd, fc,
				withOps(cellResult{Mode: modeFloorWrite, Conc: 1, RoundsP50: []time.Duration{700 * us1, 760 * us1}, loadResult: loadResult{Requests: 1, P50: 700 * us1}}, 120*us1, 140*us1)},
			want: []string{
				"| round | floor p50 | brokerd p50 | brokerd − floor | floor+write p50 | floor+write − floor | its write | brokerd − floor+write | floor+commit p50 |",
				"| 1 | 500 | 800 | 300 | 700 | 200 | 120 | 100 | 900 | 400 | 300 | -100 | 600 | 240 |",
				"| median | | | **275** (250 … 300, 2 round(s)) | | 180 (160 … 200) | 130 | 95 (90 … 100) | | 340 (280 … 400) | 300 | -65 (-100 … -30) | 600 | **250** |",
				"*floor+write* is the floor with brokerd's own durable write", "*its write* and *its commit*: that operation's own p50",
			},
			not: []string{"**180", "**130", "**95"},
		},
		{
			name: "floor+write only: no floor+commit columns",
			cells: []cellResult{floor, brokerd,
				withOps(cellResult{Mode: modeFloorWrite, Conc: 1, RoundsP50: []time.Duration{700 * us1, 760 * us1}, loadResult: loadResult{Requests: 1, P50: 700 * us1}}, 120*us1, 140*us1)},
			want: []string{"| 1 | 500 | 800 | 300 | 700 | 200 | 120 | 100 | 600 | 240 |", "*its write*: that operation's own p50"},
			not:  []string{"floor+commit"},
		},
		{
			name:  "without",
			cells: []cellResult{floor, brokerd},
			want:  []string{"| 1 | 500 | 800 | 300 | — | — | — | — | 600 | 240 |", "| median | | | **275** (250 … 300, 2 round(s)) | | — | — | — | 600 | **250** |"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			writeC1Rounds(func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }, &report{Cells: tc.cells, C1Disk: yard})
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("table lacks %q:\n%s", w, b.String())
				}
			}
			for _, w := range tc.not {
				if strings.Contains(b.String(), w) {
					t.Errorf("table has %q:\n%s", w, b.String())
				}
			}
		})
	}
}

func TestRoundOrder(t *testing.T) {
	for _, tc := range []struct {
		name      string
		modes     []string
		even, odd []string // the order of rounds 0, 2, ... and 1, 3, ...
	}{
		{
			name:  "brokerd moves after the timed floors every other round",
			modes: []string{"direct", "floor", "brokerd", modeFloorWrite, modeFloorCommit, "cached"},
			even:  []string{"direct", "floor", "brokerd", modeFloorWrite, modeFloorCommit, "cached"},
			odd:   []string{"direct", "floor", modeFloorWrite, modeFloorCommit, "brokerd", "cached"},
		},
		{
			name:  "one timed floor",
			modes: []string{"floor", "brokerd", modeFloorCommit},
			even:  []string{"floor", "brokerd", modeFloorCommit},
			odd:   []string{"floor", modeFloorCommit, "brokerd"},
		},
		{
			name:  "brokerd already after them",
			modes: []string{"floor", modeFloorWrite, "brokerd"},
			even:  []string{"floor", modeFloorWrite, "brokerd"},
			odd:   []string{"floor", modeFloorWrite, "brokerd"},
		},
		{
			name:  "no timed floor",
			modes: []string{"floor", "brokerd", "cached"},
			even:  []string{"floor", "brokerd", "cached"},
			odd:   []string{"floor", "brokerd", "cached"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			given := slices.Clone(tc.modes)
			for rd := range 4 {
				want := tc.even
				if rd%2 == 1 {
					want = tc.odd
				}
				if got := roundOrder(tc.modes, rd); !slices.Equal(got, want) {
					t.Errorf("round %d: %v, want %v", rd, got, want)
				}
			}
			if !slices.Equal(tc.modes, given) {
				t.Errorf("roundOrder changed its argument: %v", tc.modes)
			}
		})
	}
}

// TestCellModes: the timed floors run in the zero-delay c=1 cell only, and only when started;
// every other mode runs in every cell.
func TestCellModes(t *testing.T) {
	modes := []string{"direct", "floor", "brokerd", modeFloorWrite, modeFloorCommit, "cached"}
	all := func(string) bool { return true }
	for _, tc := range []struct {
		name    string
		started func(string) bool
		delay   time.Duration
		c       int
		want    []string
	}{
		{"zero delay, c=1", all, 0, 1, modes},
		{"c=16", all, 0, 16, []string{"direct", "floor", "brokerd", "cached"}},
		{"50ms delay", all, 50 * time.Millisecond, 1, []string{"direct", "floor", "brokerd", "cached"}},
		{"floor+write not started", func(m string) bool { return m != modeFloorWrite }, 0, 1,
			[]string{"direct", "floor", "brokerd", modeFloorCommit, "cached"}},
		{"none started", func(string) bool { return false }, 0, 1, []string{"direct", "floor", "brokerd", "cached"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cellModes(modes, tc.started, tc.delay, tc.c); !slices.Equal(got, tc.want) {
				t.Errorf("cellModes = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCommitsURL(t *testing.T) {
	for _, tc := range []struct {
		ready, want string
		ok          bool
	}{
		{"unix:///tmp/x/floorc.sock http://127.0.0.1:4242/_bench/ops", "http://127.0.0.1:4242/_bench/ops", true},
		{"unix:///tmp/x/floorc.sock", "", false},
		{"unix:///tmp/x/floorc.sock http://example.com/_bench/ops", "", false},
		{"unix:///tmp/x/floorc.sock http://127.0.0.1:4242/other", "", false},
		{"unix:///a http://127.0.0.1:1/_bench/ops extra", "", false},
	} {
		got, err := opsURL(tc.ready)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("opsURL(%q) = %q, %v; want %q, ok %v", tc.ready, got, err, tc.want, tc.ok)
		}
	}
}
