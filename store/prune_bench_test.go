package store

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"
)

// BenchmarkAuditPruneStall prunes a log of 200k old records while one caller appends audit
// records back to back, and reports the longest append (what a call waited) next to the prune's
// duration (issue 16 item 3: one transaction for 215k records stalled a call for 3.4 s), and the
// longest of as many appends with no prune running (the disk's own noise):
//
//	go test -run '^$' -bench AuditPruneStall -benchtime 1x ./store
func BenchmarkAuditPruneStall(b *testing.B) {
	const records = 200_000
	for b.Loop() {
		b.StopTimer()
		var worstBatch time.Duration // written by the writer goroutine, read after the prune returns
		s := benchStore(b, Options{OnAuditPrune: func(_ int, took time.Duration, _ error) { worstBatch = max(worstBatch, took) }})
		sem := make(chan struct{}, maxAuditBatch)
		var wg sync.WaitGroup
		for i := range records {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(time.Duration(i) * time.Millisecond), Method: "/credbroker.v1.SearchService/Search", Code: "OK", TokenID: "0123456789abcdef"})
			})
		}
		wg.Wait()
		var idle time.Duration
		for range 200 {
			start := time.Now()
			s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(time.Hour), Method: "/m", Code: "OK"})
			idle = max(idle, time.Since(start))
		}

		done := make(chan struct{})
		var worst, waited time.Duration
		appends := 0
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				start := time.Now()
				if err := s.AppendAudit(context.Background(), AuditRecord{Time: t0.Add(time.Hour), Method: "/m", Code: "OK"}); err != nil {
					b.Error(err)
					return
				}
				took := time.Since(start)
				worst, waited = max(worst, took), waited+took
				appends++
			}
		})
		b.StartTimer()
		start := time.Now()
		n, err := s.PruneAudit(context.Background(), t0.Add(time.Hour), math.MaxInt)
		took := time.Since(start)
		b.StopTimer()
		close(done)
		wg.Wait()
		if err != nil || n != records {
			b.Fatalf("pruned %d: %v", n, err)
		}
		b.ReportMetric(float64(took.Milliseconds()), "prune-ms")
		b.ReportMetric(float64(worst.Microseconds())/1000, "max-append-ms")
		b.ReportMetric(float64(appends), "appends-during-prune")
		b.ReportMetric(float64(waited.Microseconds())/1000/float64(max(appends, 1)), "mean-append-ms")
		b.ReportMetric(float64(idle.Microseconds())/1000, "max-append-ms-no-prune")
		b.ReportMetric(float64(worstBatch.Microseconds())/1000, "max-batch-ms")
		s.Close()
		b.StartTimer()
	}
}
