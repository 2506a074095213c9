package grpcapi

// Benchmarks of the Search and MintToken paths through the gRPC edge, for BENCHMARKS.md
// (scripts/bench.sh runs them):
//
//	go test -run '^$' -bench . -benchmem ./broker/grpcapi
//
// The upstream is an in-memory http.RoundTripper that answers with the fake Scavio's canned bytes,
// so what is measured is brokerd's own work: token check, credential load and decrypt, upstream
// request building and response parsing, proto conversion, the audit record, and (for the
// transport benchmarks) gRPC itself. The store is durable (audit fsync) unless a name says nosync.
// allocs/op of BenchmarkSearchHandler is the allocation count of one Search inside brokerd without
// the gRPC transport; disk-B/op is what the process wrote to storage per op (/proc/self/io). Every
// call sends a new query (one allocation), so the broker's result cache never answers.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

const benchQuery = "credbroker benchmark query"

var queryCounter atomic.Uint64

// newRequest is a Search request with a query not sent before in this process, so the broker's
// result cache never answers it and every call reaches the (canned) upstream.
func newRequest() *pb.SearchRequest {
	return &pb.SearchRequest{Tool: broker.DefaultTool, Query: benchQuery + " " + strconv.FormatUint(queryCounter.Add(1), 36)}
}

// cannedUpstream answers every request with the bytes the fake Scavio gives for benchQuery.
type cannedUpstream struct{ body []byte }

func newCannedUpstream(b *testing.B) *cannedUpstream {
	b.Helper()
	fake := scaviotest.NewUnstartedHandler(testKey)
	req := httptest.NewRequest(http.MethodPost, scaviotest.SearchPath, strings.NewReader(`{"query":"`+benchQuery+`","num_results":5}`))
	req.Header.Set("x-api-key", testKey)
	rec := httptest.NewRecorder()
	fake.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("canned request: %d", rec.Code)
	}
	return &cannedUpstream{body: rec.Body.Bytes()}
}

func (c *cannedUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if r.Header.Get("x-api-key") != testKey {
		return &http.Response{StatusCode: http.StatusUnauthorized, Body: io.NopCloser(strings.NewReader(`{}`)), Header: http.Header{}, Request: r}, nil
	}
	return &http.Response{
		StatusCode: http.StatusOK, ContentLength: int64(len(c.body)), Request: r,
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   io.NopCloser(bytes.NewReader(c.body)),
	}, nil
}

type benchEnv struct {
	b     *broker.Broker
	st    *store.Store
	token string
	log   *slog.Logger
}

// newBenchEnv builds a broker on a real store in b.TempDir() with the canned upstream, a stored
// key and a token without a use limit.
func newBenchEnv(b *testing.B, noSync bool) *benchEnv {
	b.Helper()
	dir := b.TempDir()
	st := storetest.Open(b, dir, store.Options{NoSync: noSync})
	b.Cleanup(func() { st.Close() })
	up, err := upstream.New(upstream.Config{BaseURL: "http://scavio.invalid", HTTPClient: &http.Client{Transport: newCannedUpstream(b)}})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	br, err := broker.New(broker.Config{Store: st, Upstream: up, Logger: log, Version: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := br.PutCredential(ctx, broker.DefaultCredential, []byte(testKey)); err != nil {
		b.Fatal(err)
	}
	tok, _, err := br.MintToken(ctx, broker.MintRequest{Tools: []string{broker.DefaultTool}, TTL: time.Hour}, broker.Caller{})
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{b: br, st: st, token: tok, log: log}
}

func parallel(b *testing.B, conc int, fn func()) {
	b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			fn()
		}
	})
}

// BenchmarkSearchHandler calls Search as the gRPC server would after decoding the request: the
// interceptor chain (auditor, admin check) and the handler, with the caller's metadata and peer
// credentials in the context, but no transport. "handler" is SearchService.Search alone (no audit
// record); "audited" adds the auditor with a durable store; "audited-nosync" with commits that
// skip fsync, which leaves the CPU cost of the audit; "cached-nosync" is audited-nosync with the
// same query every time, so every call but the first is a result cache hit, and "handler-cached"
// is handler with the same query.
func BenchmarkSearchHandler(b *testing.B) {
	for _, mode := range []string{"handler", "handler-cached", "audited", "audited-nosync", "cached-nosync"} {
		b.Run(mode, func(b *testing.B) {
			e := newBenchEnv(b, mode == "audited-nosync" || mode == "cached-nosync")
			same := newRequest()
			req := newRequest
			if mode == "cached-nosync" || mode == "handler-cached" {
				req = func() *pb.SearchRequest { return same }
			}
			svc := &SearchService{b: e.b, log: e.log}
			aud := auditor{b: e.b, log: e.log}
			info := &grpc.UnaryServerInfo{FullMethod: pb.SearchService_Search_FullMethodName}
			handler := func(ctx context.Context, req any) (any, error) { return svc.Search(ctx, req.(*pb.SearchRequest)) }
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+e.token))
			ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: peercred.AuthInfo{UID: 1000, GID: 1000, PID: 4242}})
			// A stream that takes headers as a server's does: without one grpc.SetHeader fails,
			// and building its error (which prints the whole context) cost more than the hit.
			ctx = grpc.NewContextWithServerTransportStream(ctx, headerSink{})
			call := handler
			if mode != "handler" && mode != "handler-cached" {
				call = func(ctx context.Context, req any) (any, error) {
					return aud.unary(ctx, req, info, func(ctx context.Context, req any) (any, error) {
						return Admins{}.unary(ctx, req, info, handler)
					})
				}
			}
			storetest.MeasureDisk(b)
			for b.Loop() {
				resp, err := call(ctx, req())
				if err != nil {
					b.Fatal(err)
				}
				// A hit carries its results as encoded bytes, and a miss its whole message (unknown
				// fields until a client decodes).
				out := resp.(*pb.SearchResponse)
				if n := len(out.GetResults()); n != 5 && len(out.ProtoReflect().GetUnknown()) == 0 {
					b.Fatalf("%d results", n)
				}
			}
		})
	}
}

// headerSink is the server transport stream of BenchmarkSearchHandler: it accepts and drops
// headers and trailers.
type headerSink struct{}

func (headerSink) Method() string               { return pb.SearchService_Search_FullMethodName }
func (headerSink) SetHeader(metadata.MD) error  { return nil }
func (headerSink) SendHeader(metadata.MD) error { return nil }
func (headerSink) SetTrailer(metadata.MD) error { return nil }

// serve starts the real server (NewServer, as brokerd builds it) on a Unix socket or a bufconn
// listener and returns a client connection to it.
func serve(b *testing.B, e *benchEnv, transport string, extra ...grpc.ServerOption) *grpc.ClientConn {
	b.Helper()
	var (
		lis    net.Listener
		target string
		opts   []grpc.DialOption
		sopts  []grpc.ServerOption
	)
	switch transport {
	case "unix":
		sock := filepath.Join(b.TempDir(), "b.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		lis, target = l, "unix://"+sock
	case "bufconn":
		bl := bufconn.Listen(1 << 20)
		lis, target = bl, "passthrough:///bufconn"
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return bl.DialContext(ctx) }))
		// bufconn has no peer credentials; peercred would refuse it.
		sopts = append(sopts, grpc.Creds(insecure.NewCredentials()))
	}
	srv, _ := NewServer(e.b, Options{Admins: Admins{UIDs: []uint32{uint32(os.Geteuid())}}, Logger: e.log, ServerOptions: append(sopts, extra...)})
	go srv.Serve(lis)
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return conn
}

// BenchmarkSearch is a whole Search through gRPC over a Unix socket (as brokerd serves it) and
// over bufconn (in-memory pipe), at c=1 and c=64 callers sharing one connection. "unix-workers"
// is a prototype: the same server with grpc.NumStreamWorkers, so handlers run on long-lived
// goroutines whose stacks are already grown instead of a fresh goroutine per call (whose stack
// grows again in every call's JSON decoding: runtime.copystack in brokerd's profile).
func BenchmarkSearch(b *testing.B) {
	for _, transport := range []string{"unix", "bufconn", "unix-workers"} {
		for _, c := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", transport, c), func(b *testing.B) {
				e := newBenchEnv(b, false)
				tr, extra := transport, []grpc.ServerOption(nil)
				if tr == "unix-workers" {
					tr, extra = "unix", []grpc.ServerOption{grpc.NumStreamWorkers(64)}
				}
				sc := pb.NewSearchServiceClient(serve(b, e, tr, extra...))
				ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e.token)
				if _, err := sc.Search(ctx, newRequest()); err != nil { // connect and warm the token cache
					b.Fatal(err)
				}
				storetest.MeasureDisk(b)
				if c == 1 {
					for b.Loop() {
						if _, err := sc.Search(ctx, newRequest()); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				parallel(b, c, func() {
					if _, err := sc.Search(ctx, newRequest()); err != nil {
						b.Error(err)
					}
				})
			})
		}
	}
}

// BenchmarkMintToken is MintToken over the Unix socket: the token's bbolt write, then its audit
// record, both durable.
func BenchmarkMintToken(b *testing.B) {
	for _, c := range []int{1, 32} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			e := newBenchEnv(b, false)
			ac := pb.NewAdminServiceClient(serve(b, e, "unix"))
			req := &pb.MintTokenRequest{Tools: []string{broker.DefaultTool}, Ttl: durationpb.New(time.Hour)}
			if _, err := ac.MintToken(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			var errs atomic.Int64
			storetest.MeasureDisk(b)
			if c == 1 {
				for b.Loop() {
					if _, err := ac.MintToken(context.Background(), req); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			parallel(b, c, func() {
				if _, err := ac.MintToken(context.Background(), req); err != nil && errs.Add(1) == 1 {
					b.Error(err)
				}
			})
		})
	}
}
