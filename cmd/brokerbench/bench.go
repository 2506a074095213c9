package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// report is everything one run measured; --json writes it as is.
type report struct {
	Machine machineInfo `json:"machine"`
	Args    []string    `json:"args"`
	Started time.Time   `json:"started"`
	Elapsed float64     `json:"elapsed_s"`
	Conns   int         `json:"grpc_conns"`
	Rounds  int         `json:"rounds"`
	Disk    diskInfo    `json:"disk"`
	// C1Disk is the c=1 target's yardstick, measured in the zero-delay c=1 rounds (nil when the
	// run had no such cell).
	C1Disk *c1Disk `json:"c1_disk,omitempty"`
	// BrokerdReady is exec-to-SERVING of brokerd on the (empty) database of the load matrix.
	BrokerdReady time.Duration `json:"brokerd_ready_ns"`
	Cells        []cellResult  `json:"cells"`
	Mint         []cellResult  `json:"mint,omitempty"`
	Ghz          *ghzResult    `json:"ghz,omitempty"`
	Profile      *cellResult   `json:"profile,omitempty"`
	Scale        *scaleResult  `json:"scale,omitempty"`
	Targets      []target      `json:"targets"`
	// FloorSame: the floor's answer to a new query was the same bytes as brokerd's (a cache miss);
	// FloorCheck says how they compared. Empty when the floor did not run.
	FloorSame  bool   `json:"floor_same_bytes"`
	FloorCheck string `json:"floor_check,omitempty"`
}

type machineInfo struct {
	NProc     int    `json:"nproc"`
	CPU       string `json:"cpu"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	GOMAXPROC int    `json:"gomaxprocs"`
}

// cellResult is one load cell: a mode (direct, floor, brokerd, mint, ...) at a delay and concurrency.
type cellResult struct {
	Mode  string        `json:"mode"`
	Delay time.Duration `json:"delay_ns"`
	Conc  int           `json:"conc"`
	// RoundsRPS is every round's req/s when the cell was run in rounds (--rounds); the cell's
	// other figures are its median round's.
	RoundsRPS []float64 `json:"rounds_rps,omitempty"`
	// RoundsP50 is every round's p50, in the same order: rounds of two modes at one index ran
	// side by side (the c=1 target pairs them).
	RoundsP50 []time.Duration `json:"rounds_p50_ns,omitempty"`
	// RoundsOpP50 is every round's OpP50 (floor+write and floor+commit only), in the same order.
	RoundsOpP50 []time.Duration `json:"rounds_op_p50_ns,omitempty"`
	loadResult
}

// env is the processes of one run.
type env struct {
	cfg     config
	dir     string
	key     string
	keyFile string
	keyset  string
	bin     string // brokerd binary

	up    *child
	upURL string
	floor *child
	fSock string
	// timed are the floors with one durable operation per call (floor+write, floor+commit), by
	// mode; started only for a run with a zero-delay c=1 cell.
	timed map[string]*timedFloor
}

// timedFloor is a floor child that makes one durable operation per call and times it.
type timedFloor struct {
	child *child
	sock  string
	ops   string // its operations' latencies (opLatencies)
}

// timedMode is a floor with one durable operation per call: the serve-floor flag and file that
// make it, and how the report names it.
type timedMode struct {
	mode, flag, file string
	op               string // its operation's column in the round-by-round table
	what             string // the c=1 target's note on it
	desc             string // the round-by-round table's sentence on it
}

// timedModes are brokerd's own durable write and a bbolt commit, in report order.
var timedModes = []timedMode{
	{modeFloorWrite, "--write-file", "floor-write.journal", "its write", "brokerd's durable write inside a server",
		"*floor+write* is the floor with brokerd's own durable write (the journal's 4 KiB write)"},
	{modeFloorCommit, "--commit-db", "floor-commit.db", "its commit", "the yardstick's commit inside a server",
		"*floor+commit* the floor with the same bbolt commit"},
}

func bench(ctx context.Context, cfg config) (err error) {
	start := time.Now()
	e := &env{cfg: cfg}
	if e.dir = cfg.workdir; e.dir == "" {
		// Socket paths are limited to 108 bytes: keep the directory short.
		if e.dir, err = os.MkdirTemp("", "cbb-"); err != nil {
			return err
		}
		if !cfg.keep {
			defer os.RemoveAll(e.dir)
		}
	} else if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return err
	}
	progress("work dir %s", e.dir)
	r := &report{
		Args: os.Args[1:], Started: start.UTC(), Conns: cfg.conns, Rounds: cfg.rounds,
		Machine: machineInfo{NProc: runtime.NumCPU(), CPU: cpuModel(), Kernel: kernelRelease(), Go: runtime.Version(), GOMAXPROC: runtime.GOMAXPROCS(0)},
	}
	defer e.stopAll()
	if err := e.setup(ctx); err != nil {
		return err
	}
	if r.Disk, err = measureDisk(e.dir); err != nil {
		return fmt.Errorf("measure fsync: %w", err)
	}
	progress("disk: 4 KiB durable write p50 %s, bbolt commit p50 %s", r.Disk.FdatasyncP50, r.Disk.CommitP50)

	// The load matrix and MintToken, against one real brokerd.
	bd, sock, ready, err := e.startBrokerd(ctx, "brokerd", filepath.Join(e.dir, "broker.db"))
	if err != nil {
		return err
	}
	defer bd.stop() // a no-op once stopped below
	r.BrokerdReady = ready
	tok, err := provision(ctx, sock, e.key)
	if err != nil {
		return err
	}
	if e.floor != nil {
		if r.FloorSame, r.FloorCheck, err = sameBytes(ctx, e.fSock, sock, tok); err != nil {
			return err
		}
		progress("floor vs brokerd response bytes: %s", r.FloorCheck)
	}
	if err := e.matrix(ctx, r, bd, sock, tok); err != nil {
		return err
	}
	if len(cfg.mintConc) > 0 {
		if err := e.mint(ctx, r, bd, sock); err != nil {
			return err
		}
	}
	if cfg.ghz != "" {
		if err := e.setDelay(0); err != nil {
			return err
		}
		g, err := runGhz(ctx, cfg, e.dir, sock, tok, bd.pid())
		if err != nil {
			progress("ghz failed: %v", err)
			r.Ghz = &ghzResult{Error: err.Error()}
		} else {
			r.Ghz = g
			progress("ghz c=%d: %.0f req/s p50 %s p99 %s", g.Conc, g.RPS, g.P50, g.P99)
		}
	}
	if err := bd.stop(); err != nil {
		progress("brokerd stop: %v", err)
	}

	if cfg.cpuProfile != "" {
		if r.Profile, err = e.profile(ctx); err != nil {
			return err
		}
	}
	if cfg.scaleTokens > 0 {
		if r.Scale, err = e.scale(ctx); err != nil {
			return err
		}
	}
	r.Targets = evaluate(r)
	r.Elapsed = time.Since(start).Seconds()
	return writeOutputs(cfg, r)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "brokerbench: "+format+"\n", args...)
}

// setup writes the key and master keyset, builds brokerd if needed and starts the upstream, the
// floor and, for a run with a zero-delay c=1 cell, the timed floors (floor+write, floor+commit).
func (e *env) setup(ctx context.Context) error {
	var raw [16]byte
	rand.Read(raw[:])
	e.key = "sk_bench_" + hex.EncodeToString(raw[:])
	e.keyFile = filepath.Join(e.dir, "key")
	if err := os.WriteFile(e.keyFile, []byte(e.key+"\n"), 0o600); err != nil {
		return err
	}
	e.keyset = filepath.Join(e.dir, "master-keyset.json")
	if _, err := os.Stat(e.keyset); errors.Is(err, os.ErrNotExist) {
		if err := store.NewMasterKeyset(e.keyset); err != nil {
			return err
		}
	}
	if e.bin = e.cfg.brokerd; e.bin == "" {
		e.bin = filepath.Join(e.dir, "brokerd")
		progress("building brokerd")
		build := exec.CommandContext(ctx, "go", "build", "-o", e.bin, "github.com/credbroker/credbroker/cmd/brokerd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build brokerd (or pass --brokerd): %w", err)
		}
	}
	var err error
	if e.up, e.upURL, err = startSelf(e.dir, "upstream", "serve-upstream", "--key-file", e.keyFile); err != nil {
		return err
	}
	if slices.Contains(e.cfg.modes, "floor") {
		e.fSock = filepath.Join(e.dir, "floor.sock")
		if e.floor, _, err = startSelf(e.dir, "floor", "serve-floor", "--key-file", e.keyFile, "--socket", e.fSock, "--upstream-url", e.upURL); err != nil {
			return err
		}
	}
	e.timed = map[string]*timedFloor{}
	for _, tm := range timedModes {
		if !slices.Contains(e.cfg.modes, tm.mode) || !slices.Contains(e.cfg.conc, 1) || !slices.Contains(e.cfg.delays, 0) {
			continue
		}
		name := strings.ReplaceAll(tm.mode, "+", "-")
		t := &timedFloor{sock: filepath.Join(e.dir, name+".sock")}
		var addrs string
		if t.child, addrs, err = startSelf(e.dir, name, "serve-floor", "--key-file", e.keyFile, "--socket", t.sock, "--upstream-url", e.upURL,
			tm.flag, filepath.Join(e.dir, tm.file)); err != nil {
			return err
		}
		e.timed[tm.mode] = t
		if t.ops, err = opsURL(addrs); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

func (e *env) stopAll() {
	for _, t := range e.timed {
		t.child.stop()
	}
	for _, c := range []*child{e.floor, e.up} {
		if c != nil {
			c.stop()
		}
	}
}

// setDelay tells the upstream how long to wait before answering.
func (e *env) setDelay(d time.Duration) error {
	resp, err := http.Post(e.upURL+"/_bench/delay?d="+d.String(), "text/plain", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("set upstream delay: %s", resp.Status)
	}
	return nil
}

// startBrokerd starts the real brokerd on db and returns how long it took from exec to a
// health check answering SERVING.
func (e *env) startBrokerd(ctx context.Context, name, db string) (*child, string, time.Duration, error) {
	sock := filepath.Join(e.dir, name+".sock")
	t0 := time.Now()
	c, err := startChild(e.dir, name, e.bin, "--socket", sock, "--db", db, "--master-keyset", e.keyset, "--upstream-url", e.upURL,
		"--metrics-listen", "127.0.0.1:0")
	if err != nil {
		return nil, "", 0, err
	}
	if err := waitServing(ctx, sock, c, 60*time.Second); err != nil {
		c.stop()
		return nil, "", 0, err
	}
	ready := time.Since(t0)
	if c.metrics, err = metricsURL(ctx, e.dir, c); err != nil {
		c.stop()
		return nil, "", 0, err
	}
	return c, sock, ready, nil
}

// provision stores the upstream key in a fresh brokerd and mints a token without a use limit.
func provision(ctx context.Context, sock, key string) (string, error) {
	admin, err := client.New(sock)
	if err != nil {
		return "", err
	}
	defer admin.Close()
	if _, err := admin.PutCredential(ctx, broker.DefaultCredential, []byte(key)); err != nil && !errors.Is(err, client.ErrAlreadyExists) {
		return "", fmt.Errorf("put credential: %w", err)
	}
	resp, err := admin.MintToken(ctx, &pb.MintTokenRequest{Tools: []string{broker.DefaultTool}, Ttl: durationpb.New(23 * time.Hour), Label: "brokerbench"})
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return resp.GetToken(), nil
}

// searchClients opens n client connections to sock, all with token tok.
func searchClients(sock, tok string, n int) ([]*client.Client, func(), error) {
	var cs []*client.Client
	closeAll := func() {
		for _, c := range cs {
			c.Close()
		}
	}
	for range n {
		c, err := client.New(sock, client.WithToken(tok))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cs = append(cs, c)
	}
	return cs, closeAll, nil
}

// grpcSearch searches through cs: with a new query every call (unique), or always the same one
// (what a result cache would answer).
func grpcSearch(cs []*client.Client, unique bool) func(context.Context, int) error {
	same := &pb.SearchRequest{Tool: broker.DefaultTool, Query: benchQuery}
	return func(ctx context.Context, w int) error {
		req := same
		if unique {
			req = &pb.SearchRequest{Tool: broker.DefaultTool, Query: uniqueQuery()}
		}
		resp, err := cs[w%len(cs)].Search(ctx, req)
		if err == nil && len(resp.GetResults()) != broker.DefaultNumResult {
			return fmt.Errorf("got %d results", len(resp.GetResults()))
		}
		return err
	}
}

// directSearch is what an MCP server does without a broker: POST with the key, decode the JSON.
func (e *env) directSearch() func(context.Context, int) error {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, DisableCompression: true}}
	url := e.upURL + scaviotest.SearchPath
	return func(ctx context.Context, _ int) error {
		body, err := json.Marshal(struct {
			Query      string `json:"query"`
			NumResults int    `json:"num_results"`
		}{uniqueQuery(), broker.DefaultNumResult})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-api-key", e.key)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("upstream: %s", resp.Status)
		}
		var out struct {
			Results []map[string]any `json:"results"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			return err
		}
		if len(out.Results) != broker.DefaultNumResult {
			return fmt.Errorf("got %d results", len(out.Results))
		}
		return nil
	}
}

// matrix runs every mode at every delay and concurrency, modes interleaved within a cell so
// drift on a shared machine hits them alike.
func (e *env) matrix(ctx context.Context, r *report, bd *child, bdSock, tok string) error {
	do := map[string]func(context.Context, int) error{}
	procs := map[string][]watched{}
	self := watched{role: "loadgen"}
	upw := watched{role: "upstream", pid: e.up.pid()}
	for _, m := range e.cfg.modes {
		switch m {
		case "direct":
			do[m] = e.directSearch()
			procs[m] = []watched{upw, self}
		case "floor", modeFloorWrite, modeFloorCommit:
			sock, server := e.fSock, e.floor
			if m != "floor" {
				t := e.timed[m]
				if t == nil {
					continue // no zero-delay c=1 cell in this run
				}
				sock, server = t.sock, t.child
			}
			cs, closeFn, err := searchClients(sock, tok, e.cfg.conns)
			if err != nil {
				return err
			}
			defer closeFn()
			do[m] = grpcSearch(cs, true)
			procs[m] = []watched{{role: "server", pid: server.pid()}, upw, self}
		case "brokerd", "cached":
			cs, closeFn, err := searchClients(bdSock, tok, e.cfg.conns)
			if err != nil {
				return err
			}
			defer closeFn()
			do[m] = grpcSearch(cs, m == "brokerd")
			procs[m] = []watched{{role: "server", pid: bd.pid(), metrics: bd.metrics}, upw, self}
		}
	}
	var probe *diskProbe
	defer func() {
		if probe != nil {
			probe.close()
		}
	}()
	for _, delay := range e.cfg.delays {
		if err := e.setDelay(delay); err != nil {
			return err
		}
		for _, c := range e.cfg.conc {
			// Zero-delay cells are CPU-bound and what the targets compare: on a shared machine
			// they are run in rounds (modes interleaved in each) and each mode's median round is
			// kept. Cells with an upstream delay wait on it and are steady; one round each.
			rounds := 1
			if delay == 0 {
				rounds = max(1, e.cfg.rounds)
			}
			got := map[string][]cellResult{}
			modes := cellModes(e.cfg.modes, func(m string) bool { return e.timed[m] != nil }, delay, c)
			for rd := range rounds {
				for _, m := range roundOrder(modes, rd) {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					spec := loadSpec{conc: c, warmup: e.cfg.warmup, window: e.cfg.duration, procs: procs[m], do: do[m]}
					var ops []time.Duration
					var commitsErr error
					timed := e.timed[m]
					if timed != nil {
						// The window's operations: a read as it opens drops the warm-up's. A failed
						// read is kept: after it, the next one would hand out the warm-up's too.
						spec.onWindow = func(open bool) {
							lats, err := opLatencies(ctx, timed.ops)
							if commitsErr == nil {
								commitsErr = err
							}
							if !open {
								ops = lats
							}
						}
					}
					res := runLoad(ctx, spec)
					if commitsErr != nil {
						return fmt.Errorf("%s: %w", m, commitsErr)
					}
					res.OpP50 = quantile(ops, 0.5)
					commitLine := ""
					if timed != nil {
						commitLine = fmt.Sprintf(" its durable op p50 %s", round(res.OpP50))
					}
					got[m] = append(got[m], cellResult{Mode: m, Delay: delay, Conc: c, loadResult: res})
					progress("%-12s delay=%-5s c=%-3d round %d/%d %8.0f req/s  p50 %-9s p99 %-9s server %.3f CPU-s/1k  errors %d %s%s%s",
						m, delay, c, rd+1, rounds, res.RPS, round(res.P50), round(res.P99), res.CPUPer1k["server"], res.Errors, res.FirstErr, auditLine(res.Audit), commitLine)
				}
				if delay == 0 && c == 1 {
					if probe == nil {
						var err error
						if probe, err = openDiskProbe(e.dir); err != nil {
							return fmt.Errorf("c=1 disk yardstick: %w", err)
						}
					}
					if err := e.c1Yardstick(r, probe, got["floor"]); err != nil {
						return err
					}
				}
			}
			for _, m := range modes {
				r.Cells = append(r.Cells, medianCell(got[m]))
			}
		}
	}
	return e.setDelay(0)
}

// c1Yardstick measures one round's c=1 yardstick right after the round's cells, paced at the mean
// interval between the calls of the round's floor cell: about the idle gap a lone call's durable
// write follows, but taken from the floor, so that a slower brokerd does not earn itself a longer
// gap and with it a costlier yardstick (brokerd's own interval is longer, so this is the stricter
// pace). Without a floor cell it paces at 1 ms (about the c=1 cadence here).
func (e *env) c1Yardstick(r *report, probe *diskProbe, floor []cellResult) error {
	pace, src := time.Millisecond, "fixed 1ms (no floor c=1 calls to pace by)"
	if n := len(floor); n > 0 {
		if b := floor[n-1]; b.Requests+b.Errors > 0 {
			pace = b.Window / time.Duration(b.Requests+b.Errors)
			src = "mean interval between calls of the round's floor c=1 cell"
		}
	}
	dr, err := probe.measure(pace, probeSamples)
	if err != nil {
		return fmt.Errorf("c=1 disk yardstick: %w", err)
	}
	if r.C1Disk == nil {
		r.C1Disk = &c1Disk{PaceSource: src, Samples: probeSamples}
	}
	y := r.C1Disk
	if y.PaceSource != src {
		y.PaceSource = "mixed: " + src + " in some rounds"
	}
	y.WriteDirect, y.WriteDSync = probe.file.Direct(), probe.file.DSync()
	y.Rounds = append(y.Rounds, dr)
	y.summarize()
	progress("disk at c=1   round %d: bbolt commit p50 %s paced (every %s, realised %s), %s back to back; 4 KiB durable write p50 %s paced, %s back to back",
		len(y.Rounds), round(dr.CommitPaced), round(dr.Pace), round(dr.Period), round(dr.CommitB2B), round(dr.WritePaced), round(dr.WriteB2B))
	return nil
}

// medianCell is the round with the median req/s (the lower middle one of an even count), with
// every round's req/s in RoundsRPS and p50 in RoundsP50.
func medianCell(cells []cellResult) cellResult {
	sorted := slices.Clone(cells)
	slices.SortFunc(sorted, func(a, b cellResult) int { return cmp.Compare(a.RPS, b.RPS) })
	m := sorted[(len(sorted)-1)/2]
	if len(cells) > 1 {
		for _, c := range cells {
			m.RoundsRPS = append(m.RoundsRPS, c.RPS)
			m.RoundsP50 = append(m.RoundsP50, c.P50)
			if isTimed(c.Mode) {
				m.RoundsOpP50 = append(m.RoundsOpP50, c.OpP50) // 0 for a round without one
			}
		}
	}
	return m
}

// mint measures MintToken throughput: each call is a bbolt write (and an audit record).
func (e *env) mint(ctx context.Context, r *report, bd *child, sock string) error {
	admin, err := client.New(sock)
	if err != nil {
		return err
	}
	defer admin.Close()
	req := &pb.MintTokenRequest{Tools: []string{broker.DefaultTool}, Ttl: durationpb.New(time.Hour), Label: "brokerbench mint"}
	do := func(ctx context.Context, _ int) error {
		_, err := admin.MintToken(ctx, req)
		return err
	}
	for _, c := range e.cfg.mintConc {
		res := runLoad(ctx, loadSpec{conc: c, warmup: e.cfg.warmup, window: e.cfg.mintDuration,
			procs: []watched{{role: "server", pid: bd.pid(), metrics: bd.metrics}, {role: "loadgen"}}, do: do})
		r.Mint = append(r.Mint, cellResult{Mode: "mint", Conc: c, loadResult: res})
		progress("mint    c=%-3d %8.0f req/s  p50 %-9s p99 %-9s errors %d %s%s", c, res.RPS, round(res.P50), round(res.P99), res.Errors, res.FirstErr, auditLine(res.Audit))
	}
	return nil
}

// profile runs brokerd's daemon.Run inside a brokerbench child under c=64 zero-delay load and
// writes a CPU profile of the measured window.
func (e *env) profile(ctx context.Context) (*cellResult, error) {
	if err := e.setDelay(0); err != nil {
		return nil, err
	}
	sock := filepath.Join(e.dir, "inproc.sock")
	args := []string{"serve-brokerd", "--socket", sock, "--db", filepath.Join(e.dir, "inproc.db"), "--master-keyset", e.keyset,
		"--upstream-url", e.upURL, "--cpuprofile", e.cfg.cpuProfile}
	if e.cfg.allocProfile != "" {
		args = append(args, "--allocprofile", e.cfg.allocProfile)
	}
	c, _, err := startSelf(e.dir, "inproc", args...)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	if err := waitServing(ctx, sock, c, 60*time.Second); err != nil {
		return nil, err
	}
	tok, err := provision(ctx, sock, e.key)
	if err != nil {
		return nil, err
	}
	cs, closeFn, err := searchClients(sock, tok, e.cfg.conns)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	res := runLoad(ctx, loadSpec{conc: 64, warmup: e.cfg.warmup, window: e.cfg.profileDuration,
		procs: []watched{{role: "server", pid: c.pid()}, {role: "upstream", pid: e.up.pid()}, {role: "loadgen"}}, do: grpcSearch(cs, true),
		onWindow: func(open bool) {
			s := syscall.SIGUSR2
			if open {
				s = syscall.SIGUSR1
			}
			c.cmd.Process.Signal(s)
		}})
	if _, err := c.waitLine("profiled", 30*time.Second); err != nil {
		return nil, err
	}
	progress("profiled daemon.Run c=64: %.0f req/s p50 %s; CPU profile in %s", res.RPS, round(res.P50), e.cfg.cpuProfile)
	return &cellResult{Mode: "brokerd (in-process daemon.Run, profiled)", Conc: 64, loadResult: res}, nil
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= 100*time.Microsecond:
		return d.Round(time.Microsecond)
	}
	return d.Round(100 * time.Nanosecond)
}

// writeOutputs writes --json and --markdown (and a short summary to stderr).
func writeOutputs(cfg config, r *report) error {
	write := func(path string, fn func(io.Writer) error) error {
		if path == "" {
			return nil
		}
		if path == "-" {
			return fn(os.Stdout)
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := write(cfg.jsonOut, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}); err != nil {
		return err
	}
	if err := write(cfg.mdOut, func(w io.Writer) error { return writeMarkdown(w, r) }); err != nil {
		return err
	}
	if cfg.mdOut != "-" {
		var b strings.Builder
		writeTargets(&b, r)
		fmt.Fprint(os.Stderr, b.String())
	}
	return nil
}

// auditLine summarises a cell's audit commits for the progress log.
func auditLine(a *auditStats) string {
	if a == nil || a.Commits == 0 {
		return ""
	}
	return fmt.Sprintf(" audit: %.0f commits/s × %.1f records, mean %s, writer busy %.2f", a.CommitsPerSec, a.RecordsPerCommit, round(a.MeanCommit), a.Busy)
}
