package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// fdatasyncRun starts brokerd under strace (seccomp-filtered: only the traced calls stop it, so the
// daemon runs near full speed), stores the key, mints a token, makes calls Search calls from conc
// workers, stops brokerd and returns how many durable syncs the whole run made: fdatasync and
// fsync calls, and pwritev2 calls with RWF_DSYNC (the audit journal's write and its sync in one).
func fdatasyncRun(t *testing.T, strace string, conc, calls int) (syncs, dsyncWrites int) {
	t.Helper()
	e := newEnv(t)
	trace := filepath.Join(e.dir, "fdatasync.trace")
	cmd := e.daemonCmd()
	cmd.Args = append([]string{strace, "-f", "--seccomp-bpf", "-qq", "-o", trace, "-e", "trace=fdatasync,fsync,pwritev2", "-s", "0", "--"}, cmd.Args...)
	cmd.Path = strace
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
	tok, _ := e.setup(t)
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := pb.NewSearchServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(calls); i = next.Add(1) {
				if _, err := sc.Search(ctx, &pb.SearchRequest{Tool: "web_search", Query: fmt.Sprintf("fdatasync count %d", i)}); err != nil {
					t.Errorf("call %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	e.stopTraced(t)
	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	syncs = strings.Count(string(raw), "fdatasync(") + strings.Count(string(raw), "fsync(")
	for _, line := range strings.Split(string(raw), "\n") {
		// An interrupted call's entry line holds every argument, flags included; its
		// "<... pwritev2 resumed>" line holds none and is not counted.
		if strings.Contains(line, "pwritev2(") && strings.Contains(line, "RWF_DSYNC") {
			dsyncWrites++
		}
	}
	return syncs + dsyncWrites, dsyncWrites
}

// How many fdatasyncs a Search call costs (issue 20): the run's total, less a run with no calls
// (start, key, mint, stop), per call. A lone call's audit record is one write of the audit journal
// made durable in the same call (store/journal.go: pwritev2 with RWF_DSYNC, counted as one sync);
// a checkpoint into bbolt (two fdatasyncs) runs about once a second and at stop. Concurrent calls
// share commits.
//
//	go test -count=1 -run TestFdatasyncsPerCall -v ./cmd/brokerd/
func TestFdatasyncsPerCall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts brokerd four times under strace")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	base, _ := fdatasyncRun(t, strace, 1, 0)
	t.Logf("start, credential put, mint, stop: %d syncs", base)
	for _, tc := range []struct{ conc, calls int }{{1, 200}, {16, 2000}, {64, 4000}} {
		n, dsync := fdatasyncRun(t, strace, tc.conc, tc.calls)
		n -= base
		per := float64(n) / float64(tc.calls)
		t.Logf("c=%d: %d calls, %d syncs (%d of them RWF_DSYNC journal writes): %.3f per call", tc.conc, tc.calls, n, dsync, per)
		// A lone call cannot share its fdatasync, and must not skip it; a few more than one per
		// call are checkpoints (two each, at most one a second and one at stop) and bbolt growing.
		if tc.conc == 1 && (n < tc.calls || n > tc.calls+tc.calls/10+8) {
			t.Errorf("a lone call costs %.2f fdatasyncs, want 1 (its journal write) and a few for checkpoints", per)
		}
		// Where this kernel takes RWF_DSYNC, the journal must use it (one call, not two).
		if tc.conc == 1 && dsyncWorks(t) && dsync < tc.calls {
			t.Errorf("%d of %d lone calls' journal writes used RWF_DSYNC; the kernel takes it", dsync, tc.calls)
		}
	}
}

// dsyncWorks reports whether this kernel and file system take pwritev2 with RWF_DSYNC.
func dsyncWorks(t *testing.T) bool {
	f, err := os.CreateTemp(t.TempDir(), "dsync")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = unix.Pwritev2(int(f.Fd()), [][]byte{[]byte("x")}, 0, unix.RWF_DSYNC)
	return err == nil
}
