package main

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config is brokerbench's flags.
type config struct {
	duration, warmup time.Duration
	conc             []int
	delays           []time.Duration
	modes            []string
	conns            int
	rounds           int
	brokerd          string
	workdir          string
	keep             bool

	mintDuration time.Duration
	mintConc     []int

	scaleTokens, scaleCredentials int
	scaleDuration                 time.Duration
	scaleStarts                   int
	scaleTouchAll                 bool

	cpuProfile, allocProfile string
	profileDuration          time.Duration

	ghz         string
	ghzDuration time.Duration
	ghzConc     int

	jsonOut, mdOut string
}

// allModes are the load modes in run order. Every mode sends a new query on every call, so a
// result cache in brokerd never answers, except "cached": brokerd with the same query every call
// (what its result cache, if it has one, answers without the upstream).
var allModes = []string{"direct", "floor", "brokerd", modeFloorWrite, modeFloorCommit, "cached"}

// modeFloorCommit is the floor plus one bbolt commit per call, made after its answer is built and
// before it is returned (as brokerd's audit record is): the c=1 target's commit inside a server,
// reported beside the target for scale (the paced commit alone decides it). It runs only in the
// zero-delay c=1 cells.
const modeFloorCommit = "floor+commit"

// modeFloorWrite is the floor plus brokerd's own durable write once per call (a 4 KiB block of a
// preallocated file, written and made durable by the audit journal's code), made where
// floor+commit makes its commit: what that write is, and adds, inside a server. Zero-delay c=1
// cells only, reported beside the c=1 target.
const modeFloorWrite = "floor+write"

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("brokerbench", flag.ContinueOnError)
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measured window per load cell")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured warm-up before each window")
	conc := fs.String("conc", "1,16,64", "comma-separated concurrencies (closed-loop workers)")
	delays := fs.String("delays", "0,50ms", "comma-separated artificial upstream delays")
	modes := fs.String("modes", strings.Join(allModes, ","), "which of direct,floor,floor+write,floor+commit,brokerd,cached to run (floor+write and floor+commit run at zero delay, c=1 only)")
	fs.IntVar(&c.rounds, "rounds", 1, "run each zero-delay cell this many times (modes interleaved) and keep each mode's median round; c=1 rounds also measure the disk yardstick")
	fs.IntVar(&c.conns, "conns", 1, "gRPC connections shared by the workers (floor and brokerd); 1 is one MCP server's client")
	fs.StringVar(&c.brokerd, "brokerd", "", "brokerd binary (default: go build ./cmd/brokerd into the work dir)")
	fs.StringVar(&c.workdir, "workdir", "", "directory for sockets, databases and logs (default: a new temp dir)")
	fs.BoolVar(&c.keep, "keep", false, "keep the work dir (logs, databases) after the run")
	fs.DurationVar(&c.mintDuration, "mint-duration", 0, "window per MintToken cell (default --duration)")
	mintConc := fs.String("mint-conc", "1,32", "MintToken concurrencies ('' skips)")
	fs.IntVar(&c.scaleTokens, "scale-tokens", 100000, "live tokens to seed for the scale run (0 skips it)")
	fs.IntVar(&c.scaleCredentials, "scale-credentials", 1000, "credentials to seed for the scale run")
	fs.DurationVar(&c.scaleDuration, "scale-duration", 0, "c=64 load window of the scale run (default --duration)")
	fs.BoolVar(&c.scaleTouchAll, "scale-touch-all", true, "after the timed load, search once with every remaining token (each passes through the token cache) and report memory")
	fs.IntVar(&c.scaleStarts, "scale-starts", 3, "how many times to start brokerd on the seeded database (start-to-ready is reported for each)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "profile daemon.Run in-process under c=64 zero-delay load and write the CPU profile here")
	fs.StringVar(&c.allocProfile, "allocprofile", "", "with --cpuprofile: also write the allocation profile (FILE.base is the window's start)")
	fs.DurationVar(&c.profileDuration, "profile-duration", 0, "window of the profiled run (default --duration)")
	fs.StringVar(&c.ghz, "ghz", "", "ghz binary: also load brokerd's Search with ghz over the socket and report its numbers")
	fs.DurationVar(&c.ghzDuration, "ghz-duration", 0, "ghz run length (default --duration)")
	fs.IntVar(&c.ghzConc, "ghz-conc", 64, "ghz concurrency")
	fs.StringVar(&c.jsonOut, "json", "", "write the full results as JSON to this file ('-' = stdout)")
	fs.StringVar(&c.mdOut, "markdown", "", "write the results as Markdown tables to this file ('-' = stdout)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if c.conc, err = parseInts(*conc); err != nil {
		return c, fmt.Errorf("--conc: %w", err)
	}
	if c.mintConc, err = parseInts(*mintConc); err != nil {
		return c, fmt.Errorf("--mint-conc: %w", err)
	}
	for _, s := range splitList(*delays) {
		if s == "0" {
			s = "0s"
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return c, fmt.Errorf("--delays: %q is not a duration", s)
		}
		c.delays = append(c.delays, d)
	}
	for _, m := range splitList(*modes) {
		if !slices.Contains(allModes, m) {
			return c, fmt.Errorf("--modes: unknown mode %q (want direct, floor, floor+write, floor+commit, brokerd, cached)", m)
		}
		c.modes = append(c.modes, m)
	}
	if c.duration <= 0 || c.warmup < 0 || c.conns < 1 {
		return c, errors.New("--duration must be positive, --warmup not negative, --conns at least 1")
	}
	for _, d := range []*time.Duration{&c.mintDuration, &c.scaleDuration, &c.profileDuration, &c.ghzDuration} {
		if *d <= 0 {
			*d = c.duration
		}
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", p)
		}
		out = append(out, n)
	}
	return out, nil
}
