package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// watched is a process whose CPU time a load run accounts for. pid 0 is brokerbench itself.
type watched struct {
	role string // "server", "upstream", "loadgen"
	pid  int
	// metrics is brokerd's /metrics URL: its audit commit counters are read around the window.
	metrics string
}

// loadResult is one measured window of closed-loop load.
type loadResult struct {
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	FirstErr string        `json:"first_error,omitempty"`
	Window   time.Duration `json:"window_ns"`
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50_ns"`
	P90      time.Duration `json:"p90_ns"`
	P99      time.Duration `json:"p99_ns"`
	Mean     time.Duration `json:"mean_ns"`
	Max      time.Duration `json:"max_ns"`
	// CPU is the CPU seconds each watched role used during the window; CPUPer1k the same per
	// 1,000 successful requests.
	CPU      map[string]float64 `json:"cpu_s"`
	CPUPer1k map[string]float64 `json:"cpu_s_per_1k"`
	// OtherCPU is how many cores' worth of CPU processes other than the watched ones used during
	// the window (the machine is shared): a large value means the numbers are disturbed.
	OtherCPU float64 `json:"other_cores"`
	// Steal is how many cores' worth of time the hypervisor took from this VM during the window.
	Steal float64 `json:"steal_cores"`
	// ServerDiskKiBPer1k is what the server process wrote to storage per 1,000 requests.
	ServerDiskKiBPer1k float64 `json:"server_disk_kib_per_1k,omitempty"`
	// ServerMem is the largest memory of the server process sampled during the window.
	ServerMem *memInfo `json:"server_mem_max,omitempty"`
	// SyncsPerCall is how many fdatasync/fsync/sync_file_range calls and RWF_DSYNC journal writes
	// (pwritev2) the server made per
	// successful request during the window, counted exactly by perf (nil without perf).
	SyncsPerCall *float64 `json:"server_syncs_per_call,omitempty"`
	// Audit is what brokerd's audit writer did during the window (brokerd only).
	Audit *auditStats `json:"audit,omitempty"`
	// OpP50 is the p50 of the durable operations the server made during the window, each
	// timed inside it: floor+commit's bbolt commits, floor+write's journal writes (those two only;
	// the JSON name predates floor+write).
	OpP50 time.Duration `json:"server_op_p50_ns,omitempty"`
}

// loadSpec describes one closed-loop load run.
type loadSpec struct {
	conc           int
	warmup, window time.Duration
	procs          []watched
	do             func(ctx context.Context, worker int) error
	// onWindow, if set, is called with true just before the window opens and with false just
	// after it closes (the in-process profile run starts and stops its CPU profile there).
	onWindow func(open bool)
}

// runLoad drives spec.do from spec.conc goroutines in a closed loop: warm-up first (not
// measured), then a window in which every completed call is counted and timed. CPU of the watched
// processes is sampled at the window's edges.
func runLoad(ctx context.Context, spec loadSpec) loadResult {
	conc, warmup, dur, procs, do := spec.conc, spec.warmup, spec.window, spec.procs, spec.do
	const (
		warming = iota
		measuring
		stopping
	)
	var phase atomic.Int32
	lats := make([][]time.Duration, conc)
	errs := make([]int, conc)
	var firstErr atomic.Pointer[string]
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]time.Duration, 0, 4096)
			for phase.Load() != stopping && ctx.Err() == nil {
				t0 := time.Now()
				err := do(ctx, w)
				d := time.Since(t0)
				if phase.Load() != measuring {
					continue
				}
				if err != nil {
					errs[w]++
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
					continue
				}
				buf = append(buf, d)
			}
			lats[w] = buf
		}()
	}
	sleepCtx(ctx, warmup)
	if spec.onWindow != nil {
		spec.onWindow(true)
	}
	auditURL := ""
	for _, p := range procs {
		if p.metrics != "" {
			auditURL = p.metrics
		}
	}
	var auditBefore auditCounters
	auditErr := errors.New("no metrics")
	if auditURL != "" {
		auditBefore, auditErr = scrapeAudit(ctx, auditURL)
	}
	stopSyncs := func() (int64, bool) { return 0, false }
	for _, p := range procs {
		if p.role == "server" {
			stopSyncs = countSyncs(p.pid)
		}
	}
	before := sampleCPU(procs)
	phase.Store(measuring)
	start := time.Now()
	mem := sampleMem(ctx, procs, dur)
	phase.Store(stopping)
	window := time.Since(start)
	after := sampleCPU(procs)
	syncs, syncsOK := stopSyncs()
	var auditAfter auditCounters
	if auditErr == nil {
		auditAfter, auditErr = scrapeAudit(ctx, auditURL)
	}
	if spec.onWindow != nil {
		spec.onWindow(false)
	}
	wg.Wait()

	var all []time.Duration
	r := loadResult{Window: window, CPU: map[string]float64{}, CPUPer1k: map[string]float64{}, ServerMem: mem}
	for w := range conc {
		all = append(all, lats[w]...)
		r.Errors += errs[w]
	}
	if p := firstErr.Load(); p != nil {
		r.FirstErr = *p
	}
	r.Requests = len(all)
	if syncsOK && r.Requests > 0 {
		v := float64(syncs) / float64(r.Requests)
		r.SyncsPerCall = &v
	}
	if auditErr == nil {
		r.Audit = auditAfter.stats(auditBefore)
	}
	r.RPS = float64(len(all)) / window.Seconds()
	if len(all) > 0 {
		slices.Sort(all)
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		r.Mean = sum / time.Duration(len(all))
		r.P50, r.P90, r.P99, r.Max = quantile(all, 0.50), quantile(all, 0.90), quantile(all, 0.99), all[len(all)-1]
	}
	ours := 0.0
	for role, v := range after.byRole {
		d := v - before.byRole[role]
		r.CPU[role] = d
		ours += d
		if r.Requests > 0 {
			r.CPUPer1k[role] = d / float64(r.Requests) * 1000
		}
	}
	if after.serverIO >= 0 && before.serverIO >= 0 && r.Requests > 0 {
		r.ServerDiskKiBPer1k = float64(after.serverIO-before.serverIO) / 1024 / float64(r.Requests) * 1000
	}
	if w := after.wall.Sub(before.wall).Seconds(); w > 0 {
		r.OtherCPU = max(0, (after.busy-before.busy)-ours) / w
		r.Steal = (after.steal - before.steal) / w
	}
	return r
}

// quantile returns the q-quantile of sorted samples (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

type cpuSample struct {
	wall     time.Time
	busy     float64
	steal    float64
	byRole   map[string]float64
	serverIO int64 // -1 if unknown
}

func sampleCPU(procs []watched) cpuSample {
	s := cpuSample{wall: time.Now(), byRole: map[string]float64{}, serverIO: -1}
	s.busy, s.steal, _ = systemCPU()
	for _, p := range procs {
		v, err := procCPU(p.pid)
		if err == nil {
			s.byRole[p.role] += v
		}
		if p.role == "server" {
			if n, err := procWriteBytes(p.pid); err == nil {
				s.serverIO = n
			}
		}
	}
	return s
}

// sampleMem waits d, sampling the server's memory every 50ms, and returns the maxima (nil if
// there is no server).
func sampleMem(ctx context.Context, procs []watched, d time.Duration) *memInfo {
	pid := 0
	for _, p := range procs {
		if p.role == "server" {
			pid = p.pid
		}
	}
	if pid == 0 {
		sleepCtx(ctx, d)
		return nil
	}
	var m memInfo
	end := time.Now().Add(d)
	for {
		if cur, err := procMem(pid); err == nil {
			m.maxWith(cur)
		}
		left := time.Until(end)
		if left <= 0 || ctx.Err() != nil {
			return &m
		}
		sleepCtx(ctx, min(left, 50*time.Millisecond))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
