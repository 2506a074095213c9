package store

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// mappedKiB returns how much of the mapping of file path is resident in this process (the Rss
// lines of its /proc/self/smaps entries).
func mappedKiB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	kib, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 { // a mapping's header line
			in = fields[len(fields)-1] == path
			continue
		}
		if in && fields[0] == "Rss:" {
			n, _ := strconv.Atoi(fields[1])
			kib += n
		}
	}
	return kib
}

// A read that walks every token, or many reads of single tokens, leaves the database's pages in
// the page cache but not mapped into the process (its RSS): with 100k tokens they were most of
// brokerd's memory (mapped.go).
func TestReadsLeaveFewDatabasePagesMapped(t *testing.T) {
	kek, _ := newKEK(t)
	s, err := Open(filepath.Join(t.TempDir(), "broker.db"), kek, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	const n = 4000
	for i := range n {
		if err := s.PutToken(testToken(fmt.Sprintf("tok%05d", i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	fileKiB := int(fi.Size() >> 10)
	// Mapping a page costs 4 KiB of RSS; after a trim at most a few (meta, root) are mapped again.
	const most = 64
	check := func(what string) {
		t.Helper()
		if got := mappedKiB(t, s.Path()); got > most {
			t.Errorf("after %s: %d KiB of the %d KiB database mapped, want at most %d", what, got, fileKiB, most)
		}
	}
	seen := 0
	if err := s.ForEachToken(func(*Token) error { seen++; return nil }); err != nil || seen != n {
		t.Fatalf("ForEachToken saw %d tokens (%v), want %d", seen, err, n)
	}
	check("ForEachToken")
	if _, _, err := s.ListTokens("", 1000, nil); err != nil {
		t.Fatal(err)
	}
	check("ListTokens")
	if _, err := s.CountTokens(); err != nil {
		t.Fatal(err)
	}
	check("CountTokens")
	if r, err := s.CheckIntegrity(); err != nil || !r.OK() {
		t.Fatalf("CheckIntegrity: %+v %v", r, err)
	}
	check("CheckIntegrity")
	// Single reads: after the trimEvery-th read since the last trim, nothing they mapped stays.
	for i := range trimEvery {
		if _, err := s.GetToken(fmt.Sprintf("tok%05d", (i*37)%n)); err != nil {
			t.Fatal(err)
		}
	}
	// The count started at an unknown point in a trimEvery cycle: read until it wraps.
	for s.coldReads.Load()%trimEvery != 0 {
		if _, err := s.GetToken("tok00000"); err != nil {
			t.Fatal(err)
		}
	}
	check(fmt.Sprintf("%d GetTokens", trimEvery))
	if fileKiB < 8*most {
		t.Fatalf("the database is only %d KiB: the test proves nothing", fileKiB)
	}
}

// ForEachProcessBoundToken finds exactly the process-bound tokens, whatever the other tokens'
// labels say, and skips the rest without decoding them.
func TestForEachProcessBoundToken(t *testing.T) {
	kek, _ := newKEK(t)
	s, err := Open(filepath.Join(t.TempDir(), "broker.db"), kek, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := map[string]bool{}
	for i := range 200 {
		tok := testToken(fmt.Sprintf("tok%05d", i), 0)
		switch i % 4 {
		case 0:
			tok.ProcessBound, tok.Workload = true, "w"
			want[tok.ID] = true
		case 1:
			tok.Label = `"process_bound":true` // a label that quotes the marker is not process-bound
		case 2:
			tok.Workload = "w" // fetched by attestation but not bound
		}
		if err := s.PutToken(tok); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	if err := s.ForEachProcessBoundToken(func(tok *Token) error {
		if !tok.ProcessBound {
			t.Errorf("token %s is not process-bound", tok.ID)
		}
		got[tok.ID] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("found %d process-bound tokens, want %d", len(got), len(want))
	}
	for id := range want {
		if !got[id] {
			t.Errorf("process-bound token %s not found", id)
		}
	}
}

// BenchmarkStartupTokenScan is the start-up scan for process-bound tokens over 100k tokens (none
// bound): every token decoded (ForEachToken, before) or only those whose body says so.
func BenchmarkStartupTokenScan(b *testing.B) {
	kek, _ := newKEK(b)
	s, err := Open(filepath.Join(b.TempDir(), "broker.db"), kek, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 100000 {
		if err := s.PutToken(testToken(fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15), 0)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ForEachToken", func(b *testing.B) {
		for b.Loop() {
			s.ForEachToken(func(t *Token) error { return nil })
		}
	})
	b.Run("ForEachProcessBoundToken", func(b *testing.B) {
		for b.Loop() {
			s.ForEachProcessBoundToken(func(t *Token) error { return nil })
		}
	})
}
