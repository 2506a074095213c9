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
