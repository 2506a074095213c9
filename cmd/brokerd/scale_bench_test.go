package main

// A measurement, not a test: brokerd's memory on a database holding 100k live tokens, under c=64
// Search load cycling through them (each first use misses the token cache and reads its record
// through bbolt's mmap), and its start-to-ready time.
//
//	go test -run '^$' -bench BenchmarkScaleRSS -benchtime 1x ./cmd/brokerd/
//
// It reports VmRSS split into RssAnon (heap, stacks) and RssFile (mapped file pages: brokerd's own
// executable and the database pages bbolt's mmap has touched), sampled every 50 ms.

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

var (
	scaleTokens = flag.Int("scale.tokens", 100000, "BenchmarkScaleRSS: live tokens seeded")
	scaleLoad   = flag.Duration("scale.load", 8*time.Second, "BenchmarkScaleRSS: c=64 Search load window")
	scaleArgs   = flag.String("scale.args", "", "BenchmarkScaleRSS: extra brokerd flags, space-separated")
)

// seedTokens writes n live tokens and the Scavio credential straight into db (no fsync) and returns
// the token strings.
func seedTokens(b *testing.B, db, keysetPath string, n int) []string {
	kek, err := store.LoadMasterKeyset(keysetPath)
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(db, kek, store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	if _, err := st.PutCredential(broker.DefaultCredential, []byte(itKey), now); err != nil {
		b.Fatal(err)
	}
	toks := make([]string, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 32 { // concurrent PutTokens share commits (Store.batch)
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				tok, id, hash, err := token.New()
				if err != nil {
					b.Error(err)
					return
				}
				if err := st.PutToken(store.Token{ID: id, SecretHash: hash[:], Tools: []string{broker.DefaultTool},
					CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour), Label: "scale"}); err != nil {
					b.Error(err)
					return
				}
				toks[i] = tok
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return toks
}

func BenchmarkScaleRSS(b *testing.B) {
	dir, err := os.MkdirTemp("", "cb-")
	if err != nil {
		b.Fatal(err)
	}
	u := newLightUpstream(itKey)
	e := &env{dir: dir, socket: filepath.Join(dir, "run", "broker.sock"), db: filepath.Join(dir, "broker.db"),
		keyset: filepath.Join(dir, "master.json"), fake: &scaviotest.Server{URL: u.srv.URL}}
	b.Cleanup(func() {
		if e.daemon != nil && e.daemon.ProcessState == nil {
			e.daemon.Process.Kill()
			e.daemon.Wait()
		}
		u.srv.Close()
		os.RemoveAll(dir)
	})
	if out, err := exec.Command(filepath.Join(binDir, "brokerctl"), "keyset", "new", "--out", e.keyset).CombinedOutput(); err != nil {
		b.Fatalf("keyset new: %v: %s", err, out)
	}
	toks := seedTokens(b, e.db, e.keyset, *scaleTokens)
	b.ResetTimer()

	start := time.Now()
	cmd := e.daemonCmd(strings.Fields(*scaleArgs)...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	e.daemon = cmd
	for !healthy(e.socket) {
		if time.Since(start) > time.Minute {
			b.Fatalf("brokerd not ready: %s", e.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	ready := time.Since(start)
	time.Sleep(time.Second)
	idle, err := readProcStats(cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}

	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	sc := pb.NewSearchServiceClient(conn)
	// The calls run without a deadline and stop at the window's end: a deadline would fail the calls
	// in flight when it fires.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stop atomic.Bool
	window := time.NewTimer(*scaleLoad)
	var (
		next, calls, errs atomic.Int64
		peak              procStats
		wg                sync.WaitGroup
	)
	for range 64 {
		wg.Go(func() {
			for !stop.Load() {
				tok := toks[int(next.Add(1)-1)%len(toks)]
				_, err := sc.Search(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok),
					&pb.SearchRequest{Tool: broker.DefaultTool, Query: "scale " + tok[len(tok)-8:]})
				if err != nil {
					if errs.Add(1) == 1 {
						b.Logf("first error: %v", err)
					}
					continue
				}
				calls.Add(1)
			}
		})
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
sampling:
	for {
		select {
		case <-window.C:
			stop.Store(true)
			break sampling
		case <-tick.C:
			if ps, err := readProcStats(cmd.Process.Pid); err == nil && ps.RSSKiB > peak.RSSKiB {
				peak = ps
			}
		}
	}
	wg.Wait()
	b.StopTimer()
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	b.Logf("%d tokens, db %.1f MiB: ready in %s; idle VmRSS %.1f MiB (anon %.1f, file %.1f); c=64 load %d calls (%d errors, %d distinct tokens): peak VmRSS %.1f MiB (anon %.1f, file %.1f)",
		len(toks), float64(fileSize(e.db))/(1<<20), ready.Round(time.Millisecond), mib(idle.RSSKiB), mib(idle.AnonKiB), mib(idle.FileKiB),
		calls.Load(), errs.Load(), min(next.Load(), int64(len(toks))), mib(peak.RSSKiB), mib(peak.AnonKiB), mib(peak.FileKiB))
	b.ReportMetric(mib(peak.RSSKiB), "peak-rss-MiB")
	b.ReportMetric(mib(peak.FileKiB), "peak-file-MiB")
	b.ReportMetric(mib(idle.RSSKiB), "idle-rss-MiB")
	b.ReportMetric(float64(ready.Milliseconds()), "ready-ms")
	if errs.Load() > 0 {
		b.Errorf("%d calls failed", errs.Load())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}
