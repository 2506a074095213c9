package grpcapi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A registered process needs no token to call FetchToken. Once the process-bound tokens brokerd
// watches are all taken, each further FetchToken is refused before it does anything, like a call
// without a token, and is audited like one: coalesced per uid, not a record per call, so a
// registered process looping on it cannot fill the disk through the audit log.
func TestFetchTokenPastTheWatchLimitIsCoalesced(t *testing.T) {
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	h := newHarness(t)
	t.Cleanup(h.b.StopWatching) // the fetched tokens are bound to this test process
	ctx := context.Background()
	if _, err := h.admin.AddWorkload(ctx, &pb.AddWorkloadRequest{Workload: &pb.Workload{
		Name: "self", Tools: []string{"web_search"}, Uids: []uint32{uint32(os.Geteuid())}, Ttl: durationpb.New(time.Hour),
	}}); err != nil {
		t.Fatal(err)
	}
	fetched := 0
	for ; fetched <= broker.MaxWatchedTokens; fetched++ {
		if _, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{}); err != nil {
			requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
			break
		}
	}
	if fetched == 0 || fetched > broker.MaxWatchedTokens {
		t.Fatalf("fetched %d tokens before a refusal, want 1 to %d", fetched, broker.MaxWatchedTokens)
	}
	before := len(h.auditRecords(t))
	const flood = 200
	for range flood {
		_, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{})
		requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
	}
	if got := len(h.auditRecords(t)) - before; got > 1 {
		t.Fatalf("%d refused FetchTokens wrote %d audit records before the interval closed, want at most 1", flood, got)
	}
	if err := h.b.FlushRefusals(ctx); err != nil {
		t.Fatal(err)
	}
	recs, sum := byEvent(h.auditRecords(t), broker.RefusedWatchLimit)
	if len(recs) == 0 || len(recs) > 2 || sum != flood+1 {
		t.Fatalf("%s: %d records counting %d, want 1-2 counting %d", broker.RefusedWatchLimit, len(recs), sum, flood+1)
	}
	for _, r := range recs {
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
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	h := newHarness(t)
	t.Cleanup(h.b.StopWatching) // the fetched tokens are bound to this test process
	ctx := context.Background()
	const nobody = 65534
	for name, uid := range map[string]uint32{"self": uint32(os.Geteuid()), "nobody": nobody} {
		if _, err := h.admin.AddWorkload(ctx, &pb.AddWorkloadRequest{Workload: &pb.Workload{
			Name: name, Tools: []string{"web_search"}, Uids: []uint32{uid}, Ttl: durationpb.New(time.Hour),
		}}); err != nil {
			t.Fatal(err)
		}
	}
	fetched := 0
	for ; fetched <= broker.MaxWatchedTokens; fetched++ {
		if _, err := h.search.FetchToken(ctx, &pb.FetchTokenRequest{}); err != nil {
			requireGRPCStatus(t, err, codes.ResourceExhausted, "process-bound tokens")
			break
		}
	}
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
