package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// target is one line of the targets, checked against this run.
type target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	// Status is PASS, MISS, or n/a when the run did not measure it.
	Status string `json:"status"`
}

func (r *report) cell(mode string, delay time.Duration, conc int) *cellResult {
	for i := range r.Cells {
		c := &r.Cells[i]
		if c.Mode == mode && c.Delay == delay && c.Conc == conc && c.Requests > 0 {
			return c
		}
	}
	return nil
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

const mib = 1 << 20

// evaluate checks the targets against the measurements.
func evaluate(r *report) []target {
	var ts []target
	add := func(name, want, got string, ok bool) {
		ts = append(ts, target{Name: name, Want: want, Got: got, Status: passMiss(ok)})
	}
	var delays []time.Duration
	var concs []int
	for _, c := range r.Cells {
		if !slices.Contains(delays, c.Delay) {
			delays = append(delays, c.Delay)
		}
		if !slices.Contains(concs, c.Conc) {
			concs = append(concs, c.Conc)
		}
	}
	if r.FloorCheck != "" {
		add("floor answers with brokerd's bytes (a cache miss, same query)", "byte-identical", r.FloorCheck, r.FloorSame)
	}
	// Issue 20's targets: ratios against the minimal floor, zero upstream delay.
	ratioWant := map[int]float64{16: 0.65, 64: 0.72}
	for _, c := range concs {
		b, f := r.cell("brokerd", 0, c), r.cell("floor", 0, c)
		if b == nil || f == nil {
			continue
		}
		tr := b.RPS / f.RPS
		got := fmt.Sprintf("%.2f (%.0f vs %.0f req/s%s)", tr, b.RPS, f.RPS, roundsNote(b, f))
		if want, ok := ratioWant[c]; ok {
			add(fmt.Sprintf("req/s brokerd/floor, zero delay, c=%d, durable audit", c), fmt.Sprintf("≥ %.2f", want), got, tr >= want)
		} else {
			ts = append(ts, target{Name: fmt.Sprintf("req/s brokerd/floor, zero delay, c=%d, durable audit", c), Want: "(reported)", Got: got, Status: "n/a"})
		}
	}
	for _, c := range concs {
		h, f := r.cell("cached", 0, c), r.cell("floor", 0, c)
		if h == nil || f == nil {
			continue
		}
		tr := h.RPS / f.RPS
		got := fmt.Sprintf("%.2f (%.0f vs %.0f req/s%s)", tr, h.RPS, f.RPS, roundsNote(h, f))
		if c == 16 || c == 64 {
			add(fmt.Sprintf("req/s cached/floor (same query repeated), zero delay, c=%d", c), "≥ 1.30", got, tr >= 1.3)
		} else {
			ts = append(ts, target{Name: fmt.Sprintf("req/s cached/floor (same query repeated), zero delay, c=%d", c), Want: "(reported)", Got: got, Status: "n/a"})
		}
	}
	if b, f := r.cell("brokerd", 0, 1), r.cell("floor", 0, 1); b != nil && f != nil {
		ts = append(ts, c1Target(r, b, f))
	}
	for _, d := range delays {
		if d == 0 {
			continue
		}
		for _, c := range concs {
			b, f := r.cell("brokerd", d, c), r.cell("floor", d, c)
			if b == nil || f == nil {
				continue
			}
			tr := b.RPS / f.RPS
			add(fmt.Sprintf("req/s brokerd/floor, delay %s, c=%d", d, c), "≥ 0.90", fmt.Sprintf("%.2f (%.0f vs %.0f req/s)", tr, b.RPS, f.RPS), tr >= 0.9)
		}
	}
	if s := r.Scale; s != nil {
		add(fmt.Sprintf("start-to-ready, %d tokens + %d credentials", s.Tokens, s.Credentials), "≤ 300ms",
			fmt.Sprintf("median %s, max %s", round(s.ReadyMedian), round(s.ReadyMax)), s.ReadyMax <= 300*time.Millisecond)
		add("RSS idle (VmRSS), scale db", "≤ 64 MiB", memString(s.Idle), s.Idle.RSS <= 64*mib)
		if m := s.Load.ServerMem; m != nil {
			add(fmt.Sprintf("RSS under c=64 Search load, %d tokens", s.Tokens), "≤ 96 MiB", "max "+memString(*m), m.RSS <= 96*mib)
		}
		if m := s.TouchAllMem; m != nil {
			add(fmt.Sprintf("RSS after every one of %d tokens is used (token cache bounded by --token-cache-size), c=64", s.Tokens), "≤ 64 MiB", "max "+memString(*m), m.RSS <= 64*mib)
		}
		add("ListTokens paged (no unbounded responses)", "pages ≤ 1000, larger page_size refused, all listed",
			fmt.Sprintf("%d tokens in %d pages, largest page %d KiB, page_size %d → %s", s.ListTotal, s.ListPages, s.ListPageBytes>>10, 1001, s.OversizeCode),
			s.OversizeCode == "InvalidArgument" && s.ListTotal == s.Tokens)
	}
	for _, m := range r.Mint {
		switch m.Conc {
		case 32:
			add("MintToken req/s, c=32", "≥ 1000", fmt.Sprintf("%.0f", m.RPS), m.RPS >= 1000)
		case 1:
			// Bounded by one fsync: the call waits for one durable commit (brokerd's own count of
			// every bbolt commit it made, per call), not several in a row.
			var perCall float64
			if m.Audit != nil {
				perCall = m.Audit.CommitsPerCall
			}
			add("MintToken c=1 latency bounded by one durable commit", "≤ 1 bbolt commit (2 fdatasyncs) per mint",
				fmt.Sprintf("%.2f commits per mint (credbroker_store_commits_total); p50 %s with the RPC (a bare bbolt commit: %s here); %.0f req/s",
					perCall, round(m.P50), round(r.Disk.CommitP50), m.RPS),
				perCall > 0 && perCall <= 1.05)
		}
	}
	return ts
}

// c1Target is the c=1 latency target: brokerd's p50 over the floor's, paired by round (the median
// of the per-round differences), against one bbolt commit at c=1's pace on this disk (see c1Disk),
// the back-to-back commit reported beside it. Without a paced yardstick (a report from before it)
// it compares against the back-to-back commit measured before the runs.
//
// When floor+write or floor+commit ran (the floor plus brokerd's durable write, or the same
// commit, once per call, where brokerd makes its audit record), the row also says, for scale and
// without changing the verdict, what that operation is inside a server: its own p50 there, what
// it adds to the floor's p50, and brokerd's p50 against that floor's, each paired by round.
func c1Target(r *report, b, f *cellResult) target {
	t := target{Name: "p50 brokerd − floor, zero delay, c=1"}
	med, lo, hi, n := p50Over(b, f)
	syncs := "fdatasyncs/call not counted (no perf)"
	if b.SyncsPerCall != nil {
		syncs = fmt.Sprintf("brokerd %.2f fdatasyncs/call", *b.SyncsPerCall)
	}
	over := fmt.Sprintf("%s (%s vs %s)", round(med), round(b.P50), round(f.P50))
	if n > 1 {
		over = fmt.Sprintf("%s: median of %d rounds' differences, range %s … %s (median rounds by req/s: %s vs %s)",
			round(med), n, round(lo), round(hi), round(b.P50), round(f.P50))
	}
	if n == 0 {
		t.Want, t.Got, t.Status = "≤ one bbolt commit at c=1's pace", "no round with calls in both modes", "n/a"
		return t
	}
	y := r.C1Disk
	if y == nil || y.CommitPaced <= 0 {
		t.Want = "≤ one bbolt commit"
		t.Got = fmt.Sprintf("%s; one bbolt commit p50 %s (back to back, before the runs); %s", over, round(r.Disk.CommitP50), syncs)
		t.Status = passMiss(r.Disk.CommitP50 > 0 && med <= r.Disk.CommitP50)
		return t
	}
	t.Want = fmt.Sprintf("≤ one bbolt commit at c=1's pace (back to back: %s)", round(y.CommitB2B))
	t.Got = fmt.Sprintf("%s; one bbolt commit at c=1's pace (one every %s) p50 %s, back to back %s; brokerd's own durable write (4 KiB, %s) %s paced, %s back to back; %s%s",
		over, round(y.Pace), round(y.CommitPaced), round(y.CommitB2B), map[bool]string{true: "RWF_DSYNC", false: "write + fdatasync"}[y.WriteDSync],
		round(y.WritePaced), round(y.WriteB2B), syncs, inServer(r, b, f))
	t.Status = passMiss(med <= y.CommitPaced)
	return t
}

// inServer is the c=1 target's note on the floors with one durable operation per call ("" when
// the run had none): floor+write (brokerd's own durable write) and floor+commit (the commit).
func inServer(r *report, b, f *cellResult) string {
	var s string
	for _, tm := range timedModes {
		s += timedNote(r, b, f, tm.mode, tm.what)
	}
	return s
}

// timedNote is inServer's part for one mode.
func timedNote(r *report, b, f *cellResult, mode, what string) string {
	fc := r.cell(mode, 0, 1)
	if fc == nil {
		for _, c := range r.Cells {
			if c.Mode == mode && c.Delay == 0 && c.Conc == 1 {
				return fmt.Sprintf("; for scale, %s completed no call", mode)
			}
		}
		return ""
	}
	s := fmt.Sprintf("; for scale, %s (%s: the floor with one per call):", what, mode)
	if om, k := overOwnOp(b, f, fc); k > 0 {
		s += fmt.Sprintf(" its own p50 there %s (brokerd − floor − it, paired by round: %s),", round(median(nonZero(roundsOpP50(fc)))), round(om))
	}
	if m, l, h, k := p50Over(fc, f); k > 0 {
		s += fmt.Sprintf(" %s − floor %s (%s … %s),", mode, round(m), round(l), round(h))
	}
	if m, l, h, k := pairedDiff(roundsP50(b), roundsP50(fc)); k > 0 {
		s += fmt.Sprintf(" brokerd − %s %s (%s … %s, %d rounds),", mode, round(m), round(l), round(h), k)
	}
	if fc.SyncsPerCall != nil {
		s += fmt.Sprintf(" %s %.2f fdatasyncs/call,", mode, *fc.SyncsPerCall)
	}
	return strings.TrimSuffix(s, ",")
}

// joinRounds lists every round's figure, or "—" for a cell run once.
func joinRounds[T any](xs []T, format func(T) string) string {
	if len(xs) == 0 {
		return "—"
	}
	rs := make([]string, len(xs))
	for i, v := range xs {
		rs[i] = format(v)
	}
	return strings.Join(rs, ", ")
}

func writeTargets(w io.Writer, r *report) {
	fmt.Fprintln(w, "| target | want | measured | |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "| %s | %s | %s | **%s** |\n", t.Name, t.Want, t.Got, t.Status)
	}
}

func memString(m memInfo) string {
	return fmt.Sprintf("VmRSS %.1f MiB (anon %.1f + file %.1f, of which brokerd's executable %.1f)", float64(m.RSS)/mib, float64(m.Anon)/mib, float64(m.File)/mib, float64(m.Exe)/mib)
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond)) }

func cpu1k(m map[string]float64, role string) string {
	v, ok := m[role]
	if !ok {
		return "—"
	}
	return fmt.Sprintf("%.3f", v)
}

// writeMarkdown writes the run's tables.
func writeMarkdown(w io.Writer, r *report) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("### Machine\n\n")
	p("| nproc | CPU | kernel | Go | GOMAXPROCS |\n|---|---|---|---|---|\n| %d | %s | %s | %s | %d |\n\n",
		r.Machine.NProc, r.Machine.CPU, r.Machine.Kernel, r.Machine.Go, r.Machine.GOMAXPROC)
	p("Durability on this disk (measured once before the runs, back to back): a 4 KiB block written in place and %s, as the audit journal does (O_DIRECT where the file system takes it), p50 **%s** (p99 %s); one bbolt write transaction (Update, one put) p50 **%s** (p99 %s).\n\n",
		durableHow(r.Disk.DSync), round(r.Disk.FdatasyncP50), round(r.Disk.FdatasyncP99), round(r.Disk.CommitP50), round(r.Disk.CommitP99))
	if y := r.C1Disk; y != nil {
		writeC1Disk(p, y)
	}
	p("Run: `brokerbench %s` — started %s, took %.0f s; %d gRPC connection(s) shared by the workers; brokerd exec→SERVING on an empty database: %s.\n\n",
		strings.Join(r.Args, " "), r.Started.Format(time.RFC3339), r.Elapsed, r.Conns, round(r.BrokerdReady))

	p("### Load: direct vs floor vs brokerd\n\n")
	p("Every call sends a new query, so a result cache in brokerd never answers; *cached* is brokerd with the same query on every call (answered by its result cache if it has one, without the upstream). ")
	p("Closed loop: each of c workers sends the next call when the previous returns. Latency in µs. CPU is CPU-seconds per 1,000 successful calls (= CPU-ms per call) of each process, from /proc/PID/stat over the window: *server* is the floor or brokerd process (direct has none), *upstream* the fake Scavio, *loadgen* brokerbench itself (client side). *disk* is what the server wrote to storage per 1,000 calls (/proc/PID/io). *other / steal* is how many cores other processes on the (shared) machine used meanwhile, and how many the hypervisor took from this VM (steal): large values mean the cell was disturbed.\n\n")
	p("*floor* is the minimal floor: plain net/http to the fake upstream, brokerd's gRPC server options (`grpcapi.TransportOptions`), the same response bytes as brokerd (checked: see *Targets*), no brokerd code on its request path. Every ratio below is against it. ")
	p("Zero-delay cells ran in %d round(s), the modes interleaved in each; a row with several rounds is its mode's median round, and *rounds req/s* lists them all.\n\n", max(1, r.Rounds))
	p("| delay | c | mode | req/s | rounds req/s | rounds p50 | p50 | p90 | p99 | server CPU | upstream CPU | loadgen CPU | disk KiB/1k | server RSS MiB | errors | other / steal cores |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range r.Cells {
		disk := "—"
		if c.Mode != "direct" && c.ServerMem != nil {
			disk = fmt.Sprintf("%.0f", c.ServerDiskKiBPer1k)
		}
		rss := "—"
		if c.ServerMem != nil {
			rss = fmt.Sprintf("%.1f", float64(c.ServerMem.RSS)/mib)
		}
		rounds := joinRounds(c.RoundsRPS, func(v float64) string { return fmt.Sprintf("%.0f", v) })
		roundsP50 := joinRounds(c.RoundsP50, us)
		p("| %s | %d | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %.2f / %.2f |\n", c.Delay, c.Conc, c.Mode, c.RPS, rounds, roundsP50, us(c.P50), us(c.P90), us(c.P99),
			cpu1k(c.CPUPer1k, "server"), cpu1k(c.CPUPer1k, "upstream"), cpu1k(c.CPUPer1k, "loadgen"), disk, rss, c.Errors, c.OtherCPU, c.Steal)
	}
	p("\n#### Ratios\n\n| delay | c | req/s brokerd/floor | req/s cached/floor | p50 brokerd/floor | p50 brokerd − floor | req/s brokerd/direct | p50 brokerd/direct | p50 brokerd − direct | p50 floor − direct | server CPU brokerd/floor | server CPU cached/floor | CPU ceiling brokerd/floor | CPU ceiling cached/floor | p50 brokerd − floor, paired by round: median (min … max) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range r.Cells {
		if c.Mode != "brokerd" {
			continue
		}
		f, d := r.cell("floor", c.Delay, c.Conc), r.cell("direct", c.Delay, c.Conc)
		rf, pf, rd, pd, od, fd, cf, ceil := "—", "—", "—", "—", "—", "—", "—", "—"
		hf, of, hcf, hceil, paired := "—", "—", "—", "—", "—"
		if f != nil {
			if med, lo, hi, n := p50Over(&c, f); n > 1 {
				paired = fmt.Sprintf("%s (%s … %s)", round(med), round(lo), round(hi))
			}
			rf, pf = fmt.Sprintf("%.2f", c.RPS/f.RPS), fmt.Sprintf("%.2f", float64(c.P50)/float64(f.P50))
			of = round(c.P50 - f.P50).String()
			if fc := f.CPUPer1k["server"]; fc > 0 {
				cf = fmt.Sprintf("%.2f", c.CPUPer1k["server"]/fc)
			}
			if h := r.cell("cached", c.Delay, c.Conc); h != nil {
				hf = fmt.Sprintf("%.2f", h.RPS/f.RPS)
				if fc := f.CPUPer1k["server"]; fc > 0 {
					hcf = fmt.Sprintf("%.2f", h.CPUPer1k["server"]/fc)
				}
				if ht := totalCPU(h.CPUPer1k); ht > 0 {
					hceil = fmt.Sprintf("%.2f", totalCPU(f.CPUPer1k)/ht)
				}
			}
			if bt := totalCPU(c.CPUPer1k); bt > 0 {
				ceil = fmt.Sprintf("%.2f", totalCPU(f.CPUPer1k)/bt)
			}
		}
		if d != nil {
			rd, pd = fmt.Sprintf("%.2f", c.RPS/d.RPS), fmt.Sprintf("%.2f", float64(c.P50)/float64(d.P50))
			od = round(c.P50 - d.P50).String()
			if f != nil {
				fd = round(f.P50 - d.P50).String()
			}
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.Delay, c.Conc, rf, hf, pf, of, rd, pd, od, fd, cf, hcf, ceil, hceil, paired)
	}
	p("\n*p50 brokerd − floor* is between the two modes' median rounds (picked by req/s, so with several rounds not always the same round); the last column pairs brokerd's and the floor's p50 of the same round, side by side, and takes the median of those differences: a disturbance that slows a whole round moves both sides of its difference.\n")
	p("\n*CPU ceiling* is the floor's CPU per call over brokerd's, counting every process of the cell (server, upstream, loadgen: they share the same cores). Once the cores are saturated, throughput is cores ÷ CPU per call, so this is the best req/s brokerd/floor can reach at that cell's CPU costs however the waiting is arranged; below the target, it needs less CPU per call, not more concurrency. *CPU ceiling cached/floor* is the same for cache hits: above the measured cached/floor, something other than CPU (on a shared disk, the audit writer's commits: see its *writer busy*) held the hits back.\n")
	writeC1Rounds(p, r)
	writeAuditTable(p, r)
	if len(r.Mint) > 0 {
		p("\n### MintToken\n\n| c | req/s | p50 µs | p99 µs | p50 / one bbolt commit | server CPU s/1k | disk KiB/1k | errors |\n|---|---|---|---|---|---|---|---|\n")
		for _, m := range r.Mint {
			p("| %d | %.0f | %s | %s | %.1f | %s | %.0f | %d |\n", m.Conc, m.RPS, us(m.P50), us(m.P99),
				float64(m.P50)/float64(r.Disk.CommitP50), cpu1k(m.CPUPer1k, "server"), m.ServerDiskKiBPer1k, m.Errors)
		}
	}
	if g := r.Ghz; g != nil {
		p("\n### ghz against brokerd (zero delay)\n\n")
		if g.Error != "" {
			p("ghz failed: `%s`\n", g.Error)
		} else {
			p("```\n%s\n```\n\n", g.Command)
			p("| tool | c | req/s | avg µs | p50 µs | p90 µs | p99 µs | brokerd CPU s/1k | statuses |\n|---|---|---|---|---|---|---|---|---|\n")
			var st []string
			for code, n := range g.Statuses {
				st = append(st, fmt.Sprintf("%s %d", code, n))
			}
			slices.Sort(st)
			p("| ghz | %d | %.0f | %s | %s | %s | %s | %.3f | %s |\n", g.Conc, g.RPS, us(g.Average), us(g.P50), us(g.P90), us(g.P99), g.ServerCPU1k, strings.Join(st, ", "))
			if b := r.cell("brokerd", 0, g.Conc); b != nil {
				p("| brokerbench | %d | %.0f | %s | %s | %s | %s | %s | errors %d |\n", b.Conc, b.RPS, us(b.Mean), us(b.P50), us(b.P90), us(b.P99), cpu1k(b.CPUPer1k, "server"), b.Errors)
			}
		}
	}
	if pr := r.Profile; pr != nil {
		p("\n### Profiled run\n\nbrokerd's `daemon.Run` inside a brokerbench child (same code as the binary, plus runtime/pprof), c=64, zero delay: %.0f req/s, p50 %s µs, p99 %s µs, server %s CPU-s/1k. The profile covers the measured window only.\n",
			pr.RPS, us(pr.P50), us(pr.P99), cpu1k(pr.CPUPer1k, "server"))
	}
	if s := r.Scale; s != nil {
		p("\n### Scale: %d live tokens, %d credentials\n\n", s.Tokens, s.Credentials)
		p("Seeded through the store package (NoSync) in %s; database %.1f MiB.\n\n", round(s.SeedTime), float64(s.DBBytes)/mib)
		var rs []string
		for _, d := range s.Ready {
			rs = append(rs, round(d).String())
		}
		p("| measure | value |\n|---|---|\n")
		p("| exec → health SERVING (%d starts) | %s (median %s) |\n", len(s.Ready), strings.Join(rs, ", "), round(s.ReadyMedian))
		p("| memory idle (1 s after ready) | %s; VmHWM %.1f MiB |\n", memString(s.Idle), float64(s.Idle.HWM)/mib)
		p("| Search c=64, zero delay, %d distinct tokens (each first use is a cache miss) | %.0f req/s, p50 %s µs, p99 %s µs, errors %d |\n",
			s.DistinctTokens, s.Load.RPS, us(s.Load.P50), us(s.Load.P99), s.Load.Errors)
		if m := s.Load.ServerMem; m != nil {
			p("| memory under that load (max of 50 ms samples) | %s; VmHWM %.1f MiB |\n", memString(*m), float64(m.HWM)/mib)
		}
		if m := s.TouchAllMem; m != nil {
			p("| Search once with every remaining token (c=64), so all %d are cached | %s, %d errors; memory max %s |\n", s.Tokens, round(s.TouchAllTime), s.TouchAllErrs, memString(*m))
		}
		p("| ListTokens, all pages of %d | %d tokens, %d pages, %s total, page p50 %s, max %s, largest page %d KiB |\n",
			1000, s.ListTotal, s.ListPages, round(s.ListTime), round(s.ListPageP50), round(s.ListPageMax), s.ListPageBytes>>10)
		p("| ListTokens page_size 0 / page_size 1001 | %d tokens (default page) / %s |\n", s.ListDefaultLen, s.OversizeCode)
		p("| Status RPC (counts live tokens by scanning them) | %s |\n", round(s.StatusTime))
	}
	p("\n### Targets\n\n")
	writeTargets(w, r)
	return nil
}

// durableHow says how the probe's 4 KiB writes were made durable (as the journal's are).
func durableHow(dsync bool) string {
	if dsync {
		return "made durable in the same call (pwritev2 with RWF_DSYNC)"
	}
	return "then fdatasynced (the kernel refused pwritev2's RWF_DSYNC)"
}

// writeC1Disk explains the c=1 yardstick with this run's numbers (under *Machine*).
func writeC1Disk(p func(string, ...any), y *c1Disk) {
	how := "O_DIRECT"
	if !y.WriteDirect {
		how = "buffered (the file system refused O_DIRECT)"
	}
	p("At c=1's pace, measured inside every zero-delay c=1 round right after its cells (%d of each per round, median over %d round(s)): one bbolt commit p50 **%s** paced (one started every %s, the %s; realised %s), **%s** back to back; brokerd's own durable write, a 4 KiB %s write into a preallocated file, %s (what the audit journal does for a lone call), p50 %s paced, %s back to back. ",
		y.Samples, len(y.Rounds), round(y.CommitPaced), round(y.Pace), y.PaceSource, round(y.Period), round(y.CommitB2B), how, durableHow(y.WriteDSync), round(y.WritePaced), round(y.WriteB2B))
	p("This disk's sync latency grows with how long it was idle before the sync (here ×%.1f for a bbolt commit and ×%.1f for the 4 KiB write at c=1's pace against back to back), so a back-to-back commit is the cheapest a commit ever is, not what a call pays that finds the disk idle since the previous call, as every call at c=1 does. The c=1 target therefore compares against the paced commit and shows the back-to-back one beside it; the pace is each round's floor call interval (without a broker a call comes that often; brokerd's own calls come less often and would find the disk idle longer, so this is the stricter yardstick, and a slower brokerd cannot earn itself a costlier one). The commit is the one brokerd's store makes (its bbolt options; one small put, the keys cycling over a fixed set so the database stops growing). *floor+write* and *floor+commit*, when they ran, show beside it what brokerd's durable write and the same commit are inside a server (see the round-by-round table under *Load*); they do not change the verdict.\n\n",
		ratio(y.CommitPaced, y.CommitB2B), ratio(y.WritePaced, y.WriteB2B))
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// writeC1Rounds lists the zero-delay c=1 rounds: brokerd's and the floor's p50 side by side and the
// yardstick measured right after them.
func writeC1Rounds(p func(string, ...any), r *report) {
	b, f := r.cell("brokerd", 0, 1), r.cell("floor", 0, 1)
	y := r.C1Disk
	if b == nil || f == nil || y == nil {
		return
	}
	bp, fp := roundsP50(b), roundsP50(f)
	if len(bp) != len(y.Rounds) || len(fp) != len(y.Rounds) {
		return
	}
	// Four columns per floor with a durable operation per call that ran in every round; when
	// neither did, floor+commit's columns with dashes (the table's layout before floor+write).
	type opCols struct {
		timedMode
		p50, own []time.Duration // nil: dashes
	}
	var ops []opCols
	for _, tm := range timedModes {
		c := r.cell(tm.mode, 0, 1)
		switch {
		case c != nil && len(roundsP50(c)) == len(y.Rounds) && len(roundsOpP50(c)) == len(y.Rounds):
			ops = append(ops, opCols{tm, roundsP50(c), roundsOpP50(c)})
		case tm.mode == modeFloorCommit && len(ops) == 0:
			ops = append(ops, opCols{timedMode: tm})
		}
	}
	p("\n#### c=1, zero delay, round by round\n\n")
	p("Each round ran the modes one after another, then the disk yardstick alone (µs; *paced* is one started every *pace*, the mean interval between the round's floor calls). ")
	// Only the timed floors whose columns are there.
	var what, its []string
	for _, o := range ops {
		what, its = append(what, o.desc), append(its, "*"+o.op+"*")
	}
	p("The target compares *brokerd − floor* with the *bbolt commit alone, paced* (both in bold). For scale, %s, once per call, made after its answer is built and before it is returned (where brokerd makes its audit record); %s: that operation's own p50, timed inside the server.\n\n",
		strings.Join(what, ", and "), strings.Join(its, " and "))
	head, rule := "| round | floor p50 | brokerd p50 | brokerd − floor |", "|---|---|---|---|"
	for _, o := range ops {
		head += fmt.Sprintf(" %[1]s p50 | %[1]s − floor | %[2]s | brokerd − %[1]s |", o.mode, o.op)
		rule += "---|---|---|---|"
	}
	p("%s pace | bbolt commit alone, paced | back to back | 4 KiB durable write paced | back to back |\n%s---|---|---|---|---|\n", head, rule)
	for i, d := range y.Rounds {
		row := fmt.Sprintf("| %d | %s | %s | %s |", i+1, us(fp[i]), us(bp[i]), us(bp[i]-fp[i]))
		for _, o := range ops {
			if o.p50 == nil {
				row += " — | — | — | — |"
				continue
			}
			row += fmt.Sprintf(" %s | %s | %s | %s |", us(o.p50[i]), us(o.p50[i]-fp[i]), us(o.own[i]), us(bp[i]-o.p50[i]))
		}
		p("%s %s | %s | %s | %s | %s |\n", row, us(d.Pace), us(d.CommitPaced), us(d.CommitB2B), us(d.WritePaced), us(d.WriteB2B))
	}
	med, lo, hi, n := p50Over(b, f)
	row := fmt.Sprintf("| median | | | **%s** (%s … %s, %d round(s)) |", us(med), us(lo), us(hi), n)
	span := func(m, l, h time.Duration, k int) string {
		if k == 0 {
			return "—"
		}
		return fmt.Sprintf("%s (%s … %s)", us(m), us(l), us(h))
	}
	for _, o := range ops {
		if o.p50 == nil {
			row += " | — | — | — |"
			continue
		}
		over := span(pairedDiff(o.p50, fp))
		row += fmt.Sprintf(" | %s | %s | %s |", over, us(median(nonZero(o.own))), span(pairedDiff(bp, o.p50)))
	}
	p("%s %s | **%s** | %s | %s | %s |\n", row, us(y.Pace), us(y.CommitPaced), us(y.CommitB2B), us(y.WritePaced), us(y.WriteB2B))
}

// totalCPU is the CPU seconds per 1,000 calls of every process of a cell.
func totalCPU(per1k map[string]float64) float64 {
	var t float64
	for _, v := range per1k {
		t += v
	}
	return t
}

// writeAuditTable reports what brokerd's single audit writer did in each brokerd cell.
func writeAuditTable(p func(string, ...any), r *report) {
	var rows []cellResult
	for _, c := range append(slices.Clone(r.Cells), r.Mint...) {
		if c.Audit != nil && c.Audit.Commits > 0 {
			rows = append(rows, c)
		}
	}
	if len(rows) == 0 {
		return
	}
	p("\n#### Audit group commits\n\n")
	p("From brokerd's own counters (`credbroker_audit_commits_total`, `credbroker_audit_committed_records_total`, `credbroker_audit_commit_duration_seconds`) around each window. ")
	p("One goroutine commits every queued record at once: a group that changes no state (a Search's record) is one write of the audit journal (`<db>.audit-journal`, store/journal.go) made durable in the same call (pwritev2 with RWF_DSYNC: the write and the sync an fdatasync would do), one that does (a mint, an admin call) a bbolt transaction (two fdatasyncs) with its change. *records/commit* is the group-commit factor; *checkpoints/s* how often the journal was moved into the database (a bbolt transaction each, `credbroker_audit_checkpoints_total`), *mean checkpoint µs* how long each took; *writer busy* is the fraction of the window the writer spent in commits and checkpoints: near 1, the audit writer is what limits throughput. *records/call* is 2 for most state-changing admin calls (a durable \"started\" record, then the outcome) and 1 for MintToken, whose token is committed with its record. *commits/call* counts every bbolt commit brokerd made (`credbroker_store_commits_total`, audit or not) per call: the durable commits a call waits for, shared. *fdatasyncs/call* is exact: the kernel's count of brokerd's fdatasync, fsync and sync_file_range calls and of its journal writes (pwritev2, each with RWF_DSYNC) over the window (`perf stat` on their tracepoints), per successful call.\n\n")
	p("| delay | c | mode | req/s | commits/s | records/commit | mean commit µs | checkpoints/s | mean checkpoint µs | writer busy | records/call | commits/call | fdatasyncs/call |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range rows {
		a := c.Audit
		delay := c.Delay.String()
		if c.Mode == "mint" {
			delay = "—"
		}
		syncs := "—"
		if c.SyncsPerCall != nil {
			syncs = fmt.Sprintf("%.2f", *c.SyncsPerCall)
		}
		ck := "—"
		if a.CheckpointsPerSec > 0 {
			ck = us(a.MeanCheckpoint)
		}
		p("| %s | %d | %s | %.0f | %.0f | %.1f | %s | %.1f | %s | %.2f | %.1f | %.2f | %s |\n", delay, c.Conc, c.Mode, c.RPS, a.CommitsPerSec, a.RecordsPerCommit, us(a.MeanCommit), a.CheckpointsPerSec, ck, a.Busy, a.RecordsPerCall, a.CommitsPerCall, syncs)
	}
	p("\n#### Where a Search's time goes (server side)\n\n")
	p("Means over each window from brokerd's own histograms: *call* is the Search as brokerd's interceptors see it (`credbroker_grpc_call_duration_seconds`), *upstream* one HTTP attempt to the response headers (`credbroker_upstream_request_duration_seconds`), *audit wait* the call's wait for its record to be durable (`credbroker_audit_write_duration_seconds`); *rest* is call − upstream − audit wait: brokerd's own work on the call's path (token, decrypt, body read, redaction, transcoding, hand-offs between goroutines). *client p50* is the latency brokerbench saw, for comparison (a median, not a mean).\n\n")
	p("| delay | c | mode | client p50 µs | call µs | upstream µs | audit wait µs | rest µs |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range rows {
		a := c.Audit
		if c.Mode == "mint" || a.SearchMean == 0 {
			continue
		}
		rest := a.SearchMean - a.UpstreamMean - a.AuditMean
		if c.Mode == "cached" {
			rest = a.SearchMean - a.AuditMean // a hit makes no upstream attempt
		}
		up := us(a.UpstreamMean)
		if c.Mode == "cached" {
			up = "—"
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s |\n", c.Delay, c.Conc, c.Mode, us(c.P50), us(a.SearchMean), up, us(a.AuditMean), us(rest))
	}
}
