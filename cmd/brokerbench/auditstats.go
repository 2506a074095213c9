package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// auditStats is what brokerd's audit writer did during a load window, from its Prometheus
// counters: how many group commits, how many records they carried, and how long they took. With
// the window's length it says whether the single writer was the bottleneck (busy ≈ 1).
type auditStats struct {
	Commits          float64       `json:"commits"`
	Records          float64       `json:"records"`
	CommitsPerSec    float64       `json:"commits_per_s"`
	RecordsPerCommit float64       `json:"records_per_commit"`
	MeanCommit       time.Duration `json:"mean_commit_ns"`
	// Busy is the fraction of the window the writer spent inside commits.
	Busy float64 `json:"writer_busy"`
	// RecordsPerCall is audit records per successful call (state-changing admin calls write two).
	RecordsPerCall float64 `json:"records_per_call"`
}

// auditCounters is one scrape of the counters auditStats is computed from.
type auditCounters struct{ commits, records, seconds float64 }

// scrapeAudit reads brokerd's audit commit counters from its /metrics endpoint.
func scrapeAudit(ctx context.Context, url string) (auditCounters, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return auditCounters{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return auditCounters{}, err
	}
	defer resp.Body.Close()
	var c auditCounters
	seen := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name {
		case `credbroker_audit_commits_total{result="ok"}`:
			c.commits, seen = v, seen+1
		case "credbroker_audit_committed_records_total":
			c.records, seen = v, seen+1
		case "credbroker_audit_commit_duration_seconds_sum":
			c.seconds, seen = v, seen+1
		}
	}
	if err := sc.Err(); err != nil {
		return auditCounters{}, err
	}
	if seen < 3 {
		return auditCounters{}, fmt.Errorf("%s has no audit commit series (brokerd too old?)", url)
	}
	return c, nil
}

// stats turns two scrapes around a window into auditStats.
func (after auditCounters) stats(before auditCounters, window time.Duration, calls int) *auditStats {
	s := &auditStats{Commits: after.commits - before.commits, Records: after.records - before.records}
	if s.Commits <= 0 || window <= 0 {
		return s
	}
	s.CommitsPerSec = s.Commits / window.Seconds()
	s.RecordsPerCommit = s.Records / s.Commits
	s.MeanCommit = time.Duration((after.seconds - before.seconds) / s.Commits * float64(time.Second))
	s.Busy = (after.seconds - before.seconds) / window.Seconds()
	if calls > 0 {
		s.RecordsPerCall = s.Records / float64(calls)
	}
	return s
}

// metricsURL waits for brokerd's "serving Prometheus metrics" log line (it was started with
// --metrics-listen 127.0.0.1:0) and returns the address it names.
func metricsURL(ctx context.Context, dir, name string) (string, error) {
	path := filepath.Join(dir, name+".log")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		raw, _ := os.ReadFile(path)
		for line := range strings.Lines(string(raw)) {
			if !strings.Contains(line, "serving Prometheus metrics") {
				continue
			}
			_, rest, ok := strings.Cut(line, "addr=")
			if !ok {
				continue
			}
			if f := strings.Fields(rest); len(f) > 0 {
				return strings.Trim(f[0], `"`), nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("%s: no metrics address in %s", name, path)
}
