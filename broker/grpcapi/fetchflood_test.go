package grpcapi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// newFetchHarness starts a harness for FetchToken tests and registers a workload for each name's
// uid. It skips where the kernel cannot attest callers, and stops the watching of the fetched
// tokens at cleanup (they are bound to this test process).
func newFetchHarness(t *testing.T, workloads map[string]uint32) *harness {
	t.Helper()
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	h := newHarness(t)
	t.Cleanup(h.b.StopWatching)
	for name, uid := range workloads {
		if _, err := h.admin.AddWorkload(context.Background(), &pb.AddWorkloadRequest{Workload: &pb.Workload{
			Name: name, Tools: []string{"web_search"}, Uids: []uint32{uid}, Ttl: durationpb.New(time.Hour),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// fetchUntilWatchLimit fetches tokens until brokerd refuses for its watch limit, moving the clock
// past the uid's fetch rate whenever that refuses first, and returns the ids of those it fetched.
func fetchUntilWatchLimit(t *testing.T, h *harness) []string {
	t.Helper()
	var fetched []string
	for len(fetched) <= broker.MaxWatchedTokens {
		resp, err := h.search.FetchToken(context.Background(), &pb.FetchTokenRequest{})
		if err == nil {
			fetched = append(fetched, resp.GetId())
			continue
		}
		if info, _ := details(t, err); info.GetReason() == broker.ReasonRateLimited && strings.Contains(status.Convert(err).Message(), "retry in") {
			h.clock.Add(broker.FetchBurstPerUID * broker.FetchIntervalPerUID) // the uid's limiter is full again
			continue
		}
		requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
		break
	}
	return fetched
}

// A registered process needs no token to call FetchToken. Once the process-bound tokens brokerd
// watches are all taken, each further FetchToken is refused before it does anything, like a call
// without a token, and is audited like one: coalesced per uid, not a record per call, so a
// registered process looping on it cannot fill the disk through the audit log.
func TestFetchTokenPastTheWatchLimitIsCoalesced(t *testing.T) {
	h := newFetchHarness(t, map[string]uint32{"self": uint32(os.Geteuid())})
	ctx := context.Background()
	fetched := len(fetchUntilWatchLimit(t, h))
	if fetched == 0 || fetched > broker.MaxWatchedTokens {
		t.Fatalf("fetched %d tokens before a refusal, want 1 to %d", fetched, broker.MaxWatchedTokens)
	}
	// The refusals so far (the watch limit's, and the rate's met on the way) are counted first.
	if err := h.b.FlushRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	_, base := byEvent(h.auditRecords(t), broker.RefusedWatchLimit)
	_, base2 := byEvent(h.auditRecords(t), broker.RefusedFetchRate)
	before := len(h.auditRecords(t))
	// Refused for the watch limit, then (these attempts spend the fetch rate too) for the rate.
	const flood = 200
	for range flood {
		_, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{})
		requireGRPCStatus(t, err, codes.ResourceExhausted, "")
	}
	if got := len(h.auditRecords(t)) - before; got > 2 {
		t.Fatalf("%d refused FetchTokens wrote %d audit records before the interval closed, want at most 2", flood, got)
	}
	if err := h.b.FlushRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	recs, sum := byEvent(h.auditRecords(t), broker.RefusedWatchLimit)
	rated, sum2 := byEvent(h.auditRecords(t), broker.RefusedFetchRate)
	if got := sum + sum2 - base - base2; len(recs) == 0 || len(recs)+len(rated) > 6 || got != flood {
		t.Fatalf("%s, %s: %d and %d records counting %d more, want a few counting %d more", broker.RefusedWatchLimit, broker.RefusedFetchRate,
			len(recs), len(rated), got, flood)
	}
	for _, r := range append(recs, rated...) {
		if r.Method != fetchTokenMethod || r.Code != codes.ResourceExhausted.String() || r.UID != uint32(os.Geteuid()) {
			t.Fatalf("refusal record %+v", r)
		}
	}
}

// connectAs opens a connection to the Unix socket path whose peer credentials (SO_PEERCRED, taken
// at connect) carry effective uid uid, as a process of that user would. Only the calling OS thread
// changes uid (a raw setresuid, not syscall.Setuid, which changes every thread), and only for the
// connect call.
func connectAs(t *testing.T, path string, uid int) net.Conn {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			errc <- e
			return
		}
		cerr := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// Leave the thread locked: it ends with this goroutine instead of running others as uid.
			errc <- e
			return
		}
		runtime.UnlockOSThread()
		errc <- cerr
	}()
	if err := <-errc; err != nil {
		syscall.Close(fd)
		t.Fatalf("connect as uid %d: %v", uid, err)
	}
	f := os.NewFile(uintptr(fd), path)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// One registered uid fetching in a loop (FetchToken needs no token) cannot take every
// process-bound token brokerd watches: it is refused past its share, and a workload of another
// uid still gets its token.
func TestFetchTokenOneUIDCannotTakeEveryWatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as uid 65534 (CI runs as root)")
	}
	const nobody = 65534
	h := newFetchHarness(t, map[string]uint32{"self": uint32(os.Geteuid()), "nobody": nobody})
	ctx := context.Background()
	fetched := len(fetchUntilWatchLimit(t, h))
	if fetched != broker.MaxWatchedTokensPerUID {
		t.Fatalf("uid %d fetched %d tokens before a refusal, want its share of %d", os.Geteuid(), fetched, broker.MaxWatchedTokensPerUID)
	}

	// Another registered uid connects (the socket's directory and mode let it).
	for _, d := range []string{filepath.Dir(filepath.Dir(h.sock)), filepath.Dir(h.sock)} { // t.TempDir's two levels
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(h.sock, 0o777); err != nil {
		t.Fatal(err)
	}
	conn := connectAs(t, h.sock, nobody)
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///broker", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("one connection only")
			}
			return conn, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := pb.NewSearchServiceClient(cc).FetchToken(ctx, &pb.FetchTokenRequest{})
	if err != nil {
		t.Fatalf("uid %d refused after uid %d fetched %d tokens: %v", nobody, os.Geteuid(), fetched, err)
	}
	if resp.GetWorkload() != "nobody" {
		t.Fatalf("uid %d got a token of workload %q", nobody, resp.GetWorkload())
	}
}

// Each FetchToken that succeeds writes a token record (kept) and its audit record, and the
// process's exit another: a registered uid whose processes fetch and exit in a loop would grow the
// database without bound. So one uid's fetches are rate limited (a burst, then one per interval
// on brokerd's clock), and a refused fetch is a coalesced refusal with a retry delay.
func TestFetchTokenRateLimitedPerUID(t *testing.T) {
	h := newFetchHarness(t, map[string]uint32{"self": uint32(os.Geteuid())})
	ctx := context.Background()
	fetch := func() error {
		_, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{})
		return err
	}
	fetched := 0
	for ; fetched < broker.MaxWatchedTokensPerUID; fetched++ {
		if err := fetch(); err != nil {
			requireGRPCStatus(t, err, codes.ResourceExhausted, "retry in")
			break
		}
	}
	if fetched != broker.FetchBurstPerUID {
		t.Fatalf("fetched %d tokens at once, want the burst of %d", fetched, broker.FetchBurstPerUID)
	}
	err := fetch()
	requireGRPCStatus(t, err, codes.ResourceExhausted, "retry in")
	if info, retry := details(t, err); info.GetReason() != broker.ReasonRateLimited || retry == nil ||
		retry.RetryDelay.AsDuration() <= 0 || retry.RetryDelay.AsDuration() > broker.FetchIntervalPerUID {
		t.Fatalf("refusal %v %v, want %s with a retry delay up to %s", info, retry, broker.ReasonRateLimited, broker.FetchIntervalPerUID)
	}
	h.clock.Add(broker.FetchIntervalPerUID)
	if err := fetch(); err != nil {
		t.Fatalf("after %s: %v", broker.FetchIntervalPerUID, err)
	}
	requireGRPCStatus(t, fetch(), codes.ResourceExhausted, "retry in")
	if err := h.b.FlushRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	if recs, sum := byEvent(h.auditRecords(t), broker.RefusedFetchRate); len(recs) == 0 || len(recs) > 2 || sum != 3 {
		t.Fatalf("%s: %d records counting %d, want 1-2 counting 3", broker.RefusedFetchRate, len(recs), sum)
	}
}

// pidfds counts the pidfds this process holds open (brokerd's watches, in these tests).
func pidfds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.Contains(l, "pidfd") {
			n++
		}
	}
	return n
}

// An admin's revoke of a process-bound token (FetchToken's, or `brokerctl exec`'s bind_process)
// ends its watch before it answers: the pidfd is closed and the place is free, so a uid whose
// tokens the admin revokes can fetch again at once instead of when they would have expired.
func TestAdminRevokeEndsTheWatch(t *testing.T) {
	h := newFetchHarness(t, map[string]uint32{"self": uint32(os.Geteuid())})
	ctx := context.Background()
	exec := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}, BindProcess: true})
	fetched := fetchUntilWatchLimit(t, h)
	if len(fetched) != broker.MaxWatchedTokensPerUID {
		t.Fatalf("fetched %d tokens before a refusal, want the uid's share of %d", len(fetched), broker.MaxWatchedTokensPerUID)
	}
	h.clock.Add(broker.FetchBurstPerUID * broker.FetchIntervalPerUID) // only the watch limit refuses now

	for _, tc := range []struct{ name, id string }{{"fetched", fetched[0]}, {"bind_process", exec.GetId()}} {
		watched, fds := h.b.WatchedTokens(), pidfds(t)
		if _, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: tc.id}); err != nil {
			t.Fatal(err)
		}
		if got := h.b.WatchedTokens(); got != watched-1 {
			t.Fatalf("%s: %d tokens watched after the revoke, want %d", tc.name, got, watched-1)
		}
		if got := pidfds(t); got != fds-1 {
			t.Fatalf("%s: %d pidfds open after the revoke, want %d", tc.name, got, fds-1)
		}
		// A second revoke (brokerctl exec revokes its token itself) changes nothing.
		if _, err := h.admin.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: tc.id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{}); err != nil {
		t.Fatalf("fetch after the admin revoked one of the uid's tokens: %v", err)
	}
	_, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{})
	requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
}
