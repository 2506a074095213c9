package store

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Status (Store.Keys) racing a SIGHUP re-wrap (RewrapIfNeeded with a rotated KEK) never fails:
// the new keyset is published before the new wrapping commits.
func TestKeysDuringRewrap(t *testing.T) {
	fails, trials := 0, 20
	var firstErr error
	for i := 0; i < trials; i++ {
		dir := t.TempDir()
		oldPath, newPath := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json")
		if err := NewMasterKeyset(oldPath); err != nil {
			t.Fatal(err)
		}
		oldKEK, _ := LoadMasterKeyset(oldPath)
		s, err := Open(filepath.Join(dir, "broker.db"), oldKEK, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutCredential("scavio_api_key", []byte("sk_test"), t0); err != nil {
			t.Fatal(err)
		}
		if _, err := RotateMasterKeyset(oldPath, newPath); err != nil {
			t.Fatal(err)
		}
		newKEK, _ := LoadMasterKeyset(newPath)
		var stop atomic.Bool
		var bad atomic.Int32
		var mu sync.Mutex
		var wg sync.WaitGroup
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					if _, err := s.Keys(); err != nil {
						bad.Add(1)
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(2 * time.Millisecond)
		if _, rewrapped, err := s.RewrapIfNeeded(newKEK); err != nil || !rewrapped {
			t.Fatalf("rewrap: %v %v", rewrapped, err)
		}
		time.Sleep(2 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		if bad.Load() > 0 {
			fails++
		}
		s.Close()
	}
	t.Logf("%d of %d re-wraps made a concurrent Keys() (Status) fail; first error: %v", fails, trials, firstErr)
	if fails > 0 {
		t.Fail()
	}
}

// AppendAudit racing Close: appends that arrive later fail, never hang (a request that slipped
// into the queue after the writer drained it used to wait forever).
func TestAppendAuditRacingClose(t *testing.T) {
	hung := 0
	for i := 0; i < 100; i++ {
		dir := t.TempDir()
		kek, _ := newKEK(t)
		s, err := Open(filepath.Join(dir, "broker.db"), kek, Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		const n = 16
		done := make(chan error, n)
		start := make(chan struct{})
		for g := 0; g < n; g++ {
			go func() {
				<-start
				// RecordCall passes context.WithoutCancel(ctx): no deadline.
				done <- s.AppendAudit(context.Background(), AuditRecord{Method: "/credbroker.v1.SearchService/Search", Code: "OK"})
			}()
		}
		close(start)
		s.Close()
		timeout := time.After(2 * time.Second)
		for g := 0; g < n; g++ {
			select {
			case <-done:
			case <-timeout:
				hung++
				g = n
			}
		}
	}
	t.Logf("trials with an AppendAudit still blocked 2s after Close: %d of 100", hung)
	if hung > 0 {
		t.Fail()
	}
}
