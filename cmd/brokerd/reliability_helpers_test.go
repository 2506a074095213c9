package main

// Helpers shared by the reliability tests (crash, storage, load, soak): reading a process's
// resources from /proc and Prometheus metrics, and checking a database file offline.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/store"
)

// procStats is what the kernel says about one process.
type procStats struct {
	RSSKiB  int64 // VmRSS = RssAnon + RssFile + RssShmem
	AnonKiB int64 // RssAnon: the process's own memory (heap, stacks)
	FileKiB int64 // RssFile: mapped file pages, mostly bbolt's mmap of the db (page cache)
	HWMKiB  int64 // VmHWM: peak RSS since start
	Threads int64
	FDs     int
}

func readProcStats(pid int) (procStats, error) {
	var ps procStats
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			ps.RSSKiB = n
		case "VmHWM":
			ps.HWMKiB = n
		case "RssAnon":
			ps.AnonKiB = n
		case "RssFile":
			ps.FileKiB = n
		case "Threads":
			ps.Threads = n
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return ps, err
	}
	ps.FDs = len(ents)
	return ps, nil
}

func (p procStats) String() string {
	return fmt.Sprintf("rss=%.1fMiB (anon %.1f, file %.1f) threads=%d fds=%d", float64(p.RSSKiB)/1024, float64(p.AnonKiB)/1024, float64(p.FileKiB)/1024, p.Threads, p.FDs)
}

var metricsAddrRE = regexp.MustCompile(`addr=http://(127\.0\.0\.1:\d+)/metrics`)

// metricsURL waits for brokerd (started with --metrics-listen 127.0.0.1:0) to log the address it
// serves /metrics on.
func (e *env) metricsURL(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := metricsAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			return "http://" + m[1] + "/metrics"
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("brokerd did not log its metrics address:\n%s", e.stderr.String())
	return ""
}

// scrape returns the unlabelled samples of the named metrics from a Prometheus text endpoint.
func scrape(url string, names ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		for _, n := range names {
			if rest, ok := strings.CutPrefix(line, n+" "); ok {
				if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
					out[n] = v
				}
			}
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return out, fmt.Errorf("metric %s not exposed", n)
		}
	}
	return out, nil
}

// boltCheckReadOnly opens the database file read-only with bbolt itself (no credbroker code in
// the way, no writes) and runs tx.Check over every page.
func boltCheckReadOnly(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("bbolt open read-only: %w", err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return fmt.Errorf("bbolt tx.Check: %d problems, first: %s", len(errs), errs[0])
		}
		return nil
	})
}

// openStore opens the env's database with its master keyset, as brokerd would (brokerd must not
// be running: the file lock is exclusive).
func (e *env) openStore(t *testing.T) *store.Store {
	t.Helper()
	kek, err := store.LoadMasterKeyset(e.keyset)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(e.db, kek, store.Options{})
	if err != nil {
		t.Fatalf("open the database after the kill: %v", err)
	}
	return st
}

// checkStoreConsistent runs the store's own checks: bbolt's consistency check through the store,
// and the audit chain.
func checkStoreConsistent(t *testing.T, st *store.Store) store.AuditVerification {
	t.Helper()
	if err := st.Check(); err != nil {
		t.Errorf("Store.Check: %v", err)
	}
	v, err := st.VerifyAudit()
	if err != nil || !v.OK {
		t.Errorf("Store.VerifyAudit: %v ok=%v bad=%d %s", err, v.OK, v.BadSeq, v.Problem)
	}
	return v
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return st.Size()
}

// auditFill reports how full the audit bucket's leaf pages are and how many bytes of leaf pages
// each record takes, read-only with bbolt.
func auditFill(path string) (fill, bytesPerRecord float64, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return 0, 0, err
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil {
			return fmt.Errorf("no audit bucket")
		}
		s := b.Stats()
		if s.LeafAlloc == 0 || s.KeyN == 0 {
			return fmt.Errorf("empty audit bucket")
		}
		fill = float64(s.LeafInuse) / float64(s.LeafAlloc)
		bytesPerRecord = float64(s.LeafAlloc) / float64(s.KeyN)
		return nil
	})
	return fill, bytesPerRecord, err
}
