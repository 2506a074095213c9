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
	// Busy is the fraction of the time between the two scrapes the writer spent inside commits
	// and checkpoints.
	Busy float64 `json:"writer_busy"`
	// CheckpointsPerSec is how often the audit journal was moved into the database (one bbolt
	// transaction each; credbroker_audit_checkpoints_total), and MeanCheckpoint how long each took.
	CheckpointsPerSec float64       `json:"checkpoints_per_s"`
	MeanCheckpoint    time.Duration `json:"mean_checkpoint_ns"`
	// Where a Search's time went on the server, means over the window from brokerd's histograms:
	// the whole call as its interceptors see it (credbroker_grpc_call_duration_seconds), the
	// upstream HTTP attempt to response headers (credbroker_upstream_request_duration_seconds),
	// and the wait for the call's audit record to be durable (credbroker_audit_write_duration_seconds).
	SearchMean   time.Duration `json:"search_mean_ns,omitempty"`
	UpstreamMean time.Duration `json:"upstream_mean_ns,omitempty"`
	AuditMean    time.Duration `json:"audit_write_mean_ns,omitempty"`
	// RecordsPerCall is audit records per RPC brokerd finished between the scrapes (its own
	// credbroker_grpc_calls_total; most state-changing admin calls write two records).
	RecordsPerCall float64 `json:"records_per_call"`
	// CommitsPerCall is every durable bbolt commit brokerd made (credbroker_store_commits_total:
	// audit group commits and any other write transaction) per RPC it finished.
	CommitsPerCall float64 `json:"commits_per_call"`
}

// auditCounters is one scrape of the counters auditStats is computed from, and when it was taken.
type auditCounters struct {
	at                                   time.Time
	commits, records, seconds, rpcs, txs float64
	checkpoints, checkpointSeconds       float64
	// sums and counts of the search, upstream and audit write histograms
	searchSum, searchN, upSum, upN, auditSum, auditN float64
}

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
	if resp.StatusCode != http.StatusOK {
		return auditCounters{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	c := auditCounters{at: time.Now()}
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
		if strings.HasPrefix(name, "credbroker_grpc_calls_total{") {
			c.rpcs += v
			continue
		}
		if strings.HasPrefix(name, "credbroker_upstream_request_duration_seconds_sum{") {
			c.upSum += v
			continue
		}
		if strings.HasPrefix(name, "credbroker_upstream_request_duration_seconds_count{") {
			c.upN += v
			continue
		}
		switch name {
		case `credbroker_audit_commits_total{result="ok"}`:
			c.commits, seen = v, seen+1
		case "credbroker_audit_committed_records_total":
			c.records, seen = v, seen+1
		case "credbroker_audit_commit_duration_seconds_sum":
			c.seconds, seen = v, seen+1
		case "credbroker_store_commits_total":
			c.txs, seen = v, seen+1
		case `credbroker_grpc_call_duration_seconds_sum{method="/credbroker.v1.SearchService/Search"}`:
			c.searchSum = v
		case `credbroker_grpc_call_duration_seconds_count{method="/credbroker.v1.SearchService/Search"}`:
			c.searchN = v
		case "credbroker_audit_write_duration_seconds_sum":
			c.auditSum = v
		case "credbroker_audit_write_duration_seconds_count":
			c.auditN = v
		case `credbroker_audit_checkpoints_total{result="ok"}`:
			c.checkpoints = v
		case "credbroker_audit_checkpoint_duration_seconds_sum":
			c.checkpointSeconds = v
		}
	}
	if err := sc.Err(); err != nil {
		return auditCounters{}, err
	}
	if seen < 4 {
		return auditCounters{}, fmt.Errorf("%s has no audit commit series (brokerd too old?)", url)
	}
	return c, nil
}

// stats turns two scrapes around a window into auditStats. Rates are over the time between the
// scrapes, which is what the counter deltas cover.
func (after auditCounters) stats(before auditCounters) *auditStats {
	s := &auditStats{Commits: after.commits - before.commits, Records: after.records - before.records}
	span := after.at.Sub(before.at).Seconds()
	if s.Commits <= 0 || span <= 0 {
		return s
	}
	s.CommitsPerSec = s.Commits / span
	s.RecordsPerCommit = s.Records / s.Commits
	s.MeanCommit = time.Duration((after.seconds - before.seconds) / s.Commits * float64(time.Second))
	mean := func(sum, n float64) time.Duration {
		if n <= 0 {
			return 0
		}
		return time.Duration(sum / n * float64(time.Second))
	}
	s.SearchMean = mean(after.searchSum-before.searchSum, after.searchN-before.searchN)
	s.UpstreamMean = mean(after.upSum-before.upSum, after.upN-before.upN)
	s.AuditMean = mean(after.auditSum-before.auditSum, after.auditN-before.auditN)
	s.Busy = (after.seconds - before.seconds + after.checkpointSeconds - before.checkpointSeconds) / span
	if n := after.checkpoints - before.checkpoints; n > 0 {
		s.CheckpointsPerSec = n / span
		s.MeanCheckpoint = time.Duration((after.checkpointSeconds - before.checkpointSeconds) / n * float64(time.Second))
	}
	if rpcs := after.rpcs - before.rpcs; rpcs > 0 {
		s.RecordsPerCall = s.Records / rpcs
		s.CommitsPerCall = (after.txs - before.txs) / rpcs
	}
	return s
}

// metricsURL waits for brokerd's "serving Prometheus metrics" log line (it was started with
// --metrics-listen 127.0.0.1:0) and returns the address it names.
func metricsURL(ctx context.Context, dir string, c *child) (string, error) {
	path := filepath.Join(dir, c.name+".log")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case <-c.done:
			return "", fmt.Errorf("%s exited (%v); see %s", c.name, c.err, path)
		default:
		}
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
	return "", fmt.Errorf("%s: no metrics address in %s", c.name, path)
}
