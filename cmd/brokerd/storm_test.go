package main

// A storm of 50 MB upstream bodies against the real brokerd: every call fails with the size error
// and brokerd's resident memory stays bounded (sampled from /proc/<pid>/status while it runs).

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	stormConcurrency = flag.Int("storm.concurrency", 32, "concurrent callers in TestBigBodyStormRSS")
	stormDuration    = flag.Duration("storm.duration", 4*time.Second, "how long TestBigBodyStormRSS runs")
	stormMaxRSSMiB   = flag.Int("storm.max-rss-mib", 256, "peak brokerd RSS TestBigBodyStormRSS accepts")
)

func TestBigBodyStormRSS(t *testing.T) {
	const size = 50 << 20
	chunk := []byte(strings.Repeat("a", 256<<10))
	var served atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if served.Load()%2 == 0 { // half announce their size, half are chunked and must be read to the cap
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.Write([]byte(`"`))
		for n := 1; n < size-1; n += len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), size-1-n)]); err != nil {
				return
			}
		}
		w.Write([]byte(`"`))
	}))
	defer up.Close()

	e := newEnv(t)
	e.fake.Close()
	e.fake.URL = up.URL // daemonCmd passes e.fake.URL as --upstream-url
	// No result cache, and a distinct query per call: every call reaches the upstream.
	e.startDaemon(t, "--cache-ttl", "0")
	tok, _ := e.setup(t)
	pid := e.daemon.Process.Pid
	base, err := readProcStats(pid)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *stormDuration)
	defer cancel()
	var (
		wg                sync.WaitGroup
		calls, sizeErrors atomic.Int64
		otherMu           sync.Mutex
		other             []string
		peak              procStats
		samples           int
	)
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
			if ps, err := readProcStats(pid); err == nil {
				samples++
				if ps.RSSKiB > peak.RSSKiB {
					peak = ps
				}
			}
		}
	}()
	for range *stormConcurrency {
		c, err := client.New(e.socket, client.WithToken(tok))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := c.Search(cctx, &pb.SearchRequest{Query: fmt.Sprintf("big body %d", calls.Load())})
				ccancel()
				calls.Add(1)
				switch {
				case err != nil && strings.Contains(err.Error(), "upstream response too large: 4194304-byte limit exceeded"):
					sizeErrors.Add(1)
				default:
					otherMu.Lock()
					other = append(other, fmtErr(err))
					otherMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	final, _ := readProcStats(pid)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM after the storm: %v", err)
	}
	t.Logf("STORM RESULT: %d concurrent callers for %s: %d calls (%d size errors), upstream sent %d bodies; brokerd RSS baseline %.1f MiB, peak %.1f MiB (VmHWM %.1f MiB, %d samples), after %.1f MiB; threads peak %d",
		*stormConcurrency, *stormDuration, calls.Load(), sizeErrors.Load(), served.Load(),
		float64(base.RSSKiB)/1024, float64(peak.RSSKiB)/1024, float64(peak.HWMKiB)/1024, samples, float64(final.RSSKiB)/1024, peak.Threads)
	if len(other) > 0 {
		t.Errorf("%d calls did not fail with the size error, e.g. %q", len(other), other[0])
	}
	if calls.Load() == 0 {
		t.Fatal("no calls completed")
	}
	if peak.HWMKiB/1024 > int64(*stormMaxRSSMiB) {
		t.Errorf("brokerd peak RSS %.1f MiB exceeds the %d MiB bound", float64(peak.HWMKiB)/1024, *stormMaxRSSMiB)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
