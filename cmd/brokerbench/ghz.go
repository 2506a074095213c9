package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/credbroker/credbroker/broker"
)

// ghzResult is ghz's summary of a run against brokerd's Search, plus brokerd's CPU over it.
type ghzResult struct {
	Command     string             `json:"command,omitempty"`
	Conc        int                `json:"conc"`
	Count       int                `json:"count"`
	RPS         float64            `json:"rps"`
	Average     time.Duration      `json:"average_ns"`
	P50         time.Duration      `json:"p50_ns"`
	P90         time.Duration      `json:"p90_ns"`
	P99         time.Duration      `json:"p99_ns"`
	Statuses    map[string]int     `json:"status_codes,omitempty"`
	Errors      map[string]int     `json:"errors,omitempty"`
	ServerCPU1k float64            `json:"server_cpu_s_per_1k"`
	Raw         map[string]float64 `json:"-"`
	Error       string             `json:"error,omitempty"`
}

// ghzCommand is the ghz command line that loads brokerd's Search over its Unix socket. The token
// travels in a metadata file, never on argv where every local user could read it. ghz finds the
// method through brokerd's reflection service; its {{.RequestNumber}} template makes every query
// new, like brokerbench's own brokerd cells.
func ghzCommand(bin, sock, metaFile string, conc int, dur time.Duration) []string {
	data := fmt.Sprintf(`{"tool":%q,"query":"%s ghz {{.RequestNumber}}"}`, broker.DefaultTool, benchQuery)
	return []string{bin, "--insecure", "--call", "credbroker.v1.SearchService.Search", "-d", data, "-M", metaFile,
		"-c", strconv.Itoa(conc), "--connections", "1", "-z", dur.String(), "--duration-stop", "wait", "-O", "json", "unix://" + sock}
}

func runGhz(ctx context.Context, cfg config, dir, sock, tok string, brokerdPID int) (*ghzResult, error) {
	metaFile := filepath.Join(dir, "ghz-metadata.json")
	meta, _ := json.Marshal(map[string]string{"authorization": "Bearer " + tok})
	if err := os.WriteFile(metaFile, meta, 0o600); err != nil {
		return nil, err
	}
	argv := ghzCommand(cfg.ghz, sock, metaFile, cfg.ghzConc, cfg.ghzDuration)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	before, _ := procCPU(brokerdPID)
	err := cmd.Run()
	after, _ := procCPU(brokerdPID)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
	}
	var raw struct {
		Count   int     `json:"count"`
		Average float64 `json:"average"`
		RPS     float64 `json:"rps"`
		Lat     []struct {
			Percentage int     `json:"percentage"`
			Latency    float64 `json:"latency"`
		} `json:"latencyDistribution"`
		Status map[string]int `json:"statusCodeDistribution"`
		Errors map[string]int `json:"errorDistribution"`
	}
	if err := json.Unmarshal(out.Bytes(), &raw); err != nil {
		return nil, fmt.Errorf("parse ghz output: %w", err)
	}
	g := &ghzResult{
		Command: shellJoin(argv), Conc: cfg.ghzConc, Count: raw.Count, RPS: raw.RPS,
		Average: time.Duration(raw.Average), Statuses: raw.Status, Errors: raw.Errors,
	}
	for _, l := range raw.Lat {
		switch l.Percentage {
		case 50:
			g.P50 = time.Duration(l.Latency)
		case 90:
			g.P90 = time.Duration(l.Latency)
		case 99:
			g.P99 = time.Duration(l.Latency)
		}
	}
	if raw.Count > 0 {
		g.ServerCPU1k = (after - before) / float64(raw.Count) * 1000
	}
	return g, nil
}

// shellJoin quotes argv for a POSIX shell, for the report.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
