package grpcapi

// Upstream fault injection, seen from a gRPC client: for each way the upstream can misbehave, the
// code and message a caller gets, how long it took against the caller's deadline, how many
// attempts reached the upstream, and that the whole stack (gRPC server, broker, upstream client,
// store) leaves no goroutine behind.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

// faultUpstream is an httptest server whose handler misbehaves in one way. Handlers must return
// once release is closed (or the request's context ends), so the server can close.
type faultUpstream struct {
	srv      *httptest.Server
	url      string
	requests atomic.Int64 // requests that reached the handler
	conns    atomic.Int64 // TCP connections accepted (counts TLS handshakes that fail)
	release  chan struct{}
}

func startFaultUpstream(t *testing.T, tls bool, h func(f *faultUpstream, w http.ResponseWriter, r *http.Request)) *faultUpstream {
	f := &faultUpstream{release: make(chan struct{})}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		io.Copy(io.Discard, r.Body)
		h(f, w, r)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake failures are the point
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	f.srv, f.url = srv, srv.URL
	return f
}

func (f *faultUpstream) close() {
	close(f.release)
	f.srv.CloseClientConnections()
	f.srv.Close()
}

// wait blocks until the test releases the handler or the client goes away.
func (f *faultUpstream) wait(r *http.Request) {
	select {
	case <-f.release:
	case <-r.Context().Done():
	}
}

func scavioBody(n int) []byte {
	resp := scaviotest.SearchResponse{Query: "q", CreditsUsed: 1}
	for i := range n {
		resp.Results = append(resp.Results, scaviotest.Result{Title: fmt.Sprintf("Result %d", i+1), URL: fmt.Sprintf("https://example.com/%d", i+1), Snippet: "snippet", Position: i + 1})
	}
	b, _ := json.Marshal(resp)
	return b
}

func writeScavioError(w http.ResponseWriter, status int, code, retryAfter string) {
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":"injected"}}`, code)
}

// faultStack is one complete brokerd in-process (store, broker, gRPC server on a Unix socket)
// calling url as its upstream.
type faultStack struct {
	search pb.SearchServiceClient
	token  string
	close  func()
}

func newFaultStack(t *testing.T, url string, cfg upstream.Config) *faultStack {
	t.Helper()
	dir, err := os.MkdirTemp("", "cbf-")
	if err != nil {
		t.Fatal(err)
	}
	st := storetest.Open(t, dir, store.Options{})
	if _, err := st.PutCredential(broker.DefaultCredential, []byte(testKey), time.Now()); err != nil {
		t.Fatal(err)
	}
	cfg.BaseURL = url
	up, err := upstream.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := broker.New(broker.Config{Store: st, Upstream: up, Logger: logger, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := NewServer(b, Options{Admins: Admins{UIDs: []uint32{uint32(os.Geteuid())}}, Logger: logger})
	sock := filepath.Join(dir, "b.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pb.NewAdminServiceClient(conn).MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return &faultStack{
		search: pb.NewSearchServiceClient(conn), token: tok.Token,
		close: func() {
			conn.Close()
			srv.Stop()
			<-served
			// Cut off at once what still waits for the upstream, settled before the store closes.
			now, cancel := context.WithCancel(context.Background())
			cancel()
			b.Drain(now)
			st.Close()
			os.RemoveAll(dir)
		},
	}
}

type faultCase struct {
	name    string
	tls     bool
	url     string // instead of the fault server's URL (DNS failure)
	handler func(f *faultUpstream, w http.ResponseWriter, r *http.Request)
	// cfg is the upstream client's configuration; the zero value is brokerd's (defaults:
	// 15s per attempt, 2 retries, 200ms backoff, Retry-After honoured up to 10s, 4 MiB cap).
	cfg      upstream.Config
	deadline time.Duration // the caller's deadline

	wantCode     codes.Code
	wantMsg      []string
	wantMsgOneOf []string      // the message contains at least one of these
	wantRequests int64         // requests that reached the upstream handler; -1: don't check
	minElapsed   time.Duration // a wait that must have been honoured
}

func hang(f *faultUpstream, _ http.ResponseWriter, r *http.Request) { f.wait(r) }

func stalledBody(f *faultUpstream, w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(`{"results":[`))
	w.(http.Flusher).Flush()
	f.wait(r)
}

// drip sends body a few bytes at a time, every interval, then (if forever) keeps sending spaces.
func drip(body []byte, chunk int, interval time.Duration, forever bool) func(*faultUpstream, http.ResponseWriter, *http.Request) {
	return func(f *faultUpstream, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; i < len(body) || forever; i += chunk {
			if i < len(body) {
				w.Write(body[i:min(i+chunk, len(body))])
			} else {
				w.Write([]byte(" "))
			}
			w.(http.Flusher).Flush()
			select {
			case <-tick.C:
			case <-f.release:
				return
			case <-r.Context().Done():
				return
			}
		}
	}
}

// bigBody streams 50 MB of a JSON string, with or without a Content-Length.
func bigBody(withLength bool) func(*faultUpstream, http.ResponseWriter, *http.Request) {
	const size = 50 << 20
	return func(f *faultUpstream, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if withLength {
			w.Header().Set("Content-Length", strconv.Itoa(size))
		}
		w.WriteHeader(http.StatusOK)
		chunk := []byte(strings.Repeat("a", 64<<10))
		w.Write([]byte(`"`))
		for n := 1; n < size-1; n += len(chunk) {
			if _, err := w.Write(chunk[:min(len(chunk), size-1-n)]); err != nil {
				return // the client hung up: it read what it allows and dropped the rest
			}
		}
		w.Write([]byte(`"`))
	}
}

func resetConn(_ *faultUpstream, w http.ResponseWriter, _ *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	conn.(*net.TCPConn).SetLinger(0) // close with RST, not FIN
	conn.Close()
}

func truncated(_ *faultUpstream, w http.ResponseWriter, _ *http.Request) {
	body := scavioBody(5)
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	buf.Write(body[:len(body)/2])
	buf.Flush()
}

// statusThenOK answers status for the first n requests, then a normal result.
func statusThenOK(status int, n int64, retryAfter string) func(*faultUpstream, http.ResponseWriter, *http.Request) {
	return func(f *faultUpstream, w http.ResponseWriter, r *http.Request) {
		if n < 0 || f.requests.Load() <= n {
			code := "server_error"
			if status == http.StatusTooManyRequests {
				code = "rate_limit_exceeded"
			}
			writeScavioError(w, status, code, retryAfter)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(scavioBody(5))
	}
}

// deadlineMsgs are the messages a caller whose own deadline ended the call may see.
var deadlineMsgs = []string{"context deadline exceeded", "RST_STREAM", "deadline exceeded"}

func TestUpstreamFaults(t *testing.T) {
	fast := upstream.Config{AttemptTimeout: 300 * time.Millisecond}
	cases := []faultCase{
		{
			// The caller's deadline ends these: the client's and the server's copy of it race, so the
			// message is the client's "context deadline exceeded" or the server's RST_STREAM; the
			// code, which is what a caller acts on, is the same either way.
			name: "hang, caller deadline before the attempt timeout", handler: hang, deadline: time.Second,
			wantCode: codes.DeadlineExceeded, wantMsgOneOf: deadlineMsgs, wantRequests: 1,
		},
		{
			name: "hang, attempt timeout 300ms", handler: hang, cfg: fast, deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream unavailable: attempt timed out after 300ms", "(after 3 attempts)"}, wantRequests: 3,
		},
		{
			name: "headers then a stalled body", handler: stalledBody, deadline: time.Second,
			wantCode: codes.DeadlineExceeded, wantMsgOneOf: deadlineMsgs, wantRequests: 1,
		},
		{
			name: "headers then a stalled body, attempt timeout 300ms", handler: stalledBody, cfg: fast, deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"attempt timed out after 300ms while reading the response", "(after 3 attempts)"}, wantRequests: 3,
		},
		{
			name: "slow-drip body that completes in time", handler: drip(scavioBody(5), 64, 40*time.Millisecond, false), deadline: 5 * time.Second,
			wantCode: codes.OK, wantRequests: 1,
		},
		{
			// The client's and the server's copy of the deadline race: the message is either the
			// client's "context deadline exceeded" or the server's RST_STREAM; the code is the same.
			name: "slow-drip body that never ends", handler: drip(nil, 1, 50*time.Millisecond, true), deadline: time.Second,
			wantCode: codes.DeadlineExceeded, wantMsgOneOf: deadlineMsgs, wantRequests: 1,
		},
		{
			name: "50 MB body with Content-Length", handler: bigBody(true), deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream response too large: 4194304-byte limit exceeded"}, wantRequests: 1,
		},
		{
			name: "50 MB chunked body", handler: bigBody(false), deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream response too large: 4194304-byte limit exceeded"}, wantRequests: 1,
		},
		{
			name: "malformed JSON", deadline: 5 * time.Second,
			handler: func(_ *faultUpstream, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Write([]byte(`{"results":[{"title":"x",]`))
			},
			wantCode: codes.Unavailable, wantMsg: []string{"upstream returned a malformed response: response body is not valid JSON"}, wantRequests: 1,
		},
		{
			name: "truncated body", handler: truncated, deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream returned a malformed response: response body truncated"}, wantRequests: 1,
		},
		{
			name: "connection reset", handler: resetConn, deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream unavailable:", "connection reset by peer", "(after 3 attempts)"}, wantRequests: 3,
		},
		{
			name: "429 storm without Retry-After", handler: statusThenOK(429, -1, ""), deadline: 5 * time.Second,
			wantCode: codes.ResourceExhausted, wantMsg: []string{"upstream returned 429 rate_limit_exceeded (rate limit exceeded) (after 3 attempts)"},
			wantRequests: 3, minElapsed: 300 * time.Millisecond,
		},
		{
			name: "429 storm with Retry-After: 1 (honoured)", handler: statusThenOK(429, -1, "1"), deadline: 5 * time.Second,
			wantCode: codes.ResourceExhausted, wantMsg: []string{"upstream returned 429 rate_limit_exceeded", "retry after 1s (after 3 attempts)"},
			wantRequests: 3, minElapsed: 2 * time.Second,
		},
		{
			name: "429 with Retry-After: 3600 (longer than brokerd waits)", handler: statusThenOK(429, -1, "3600"), deadline: 5 * time.Second,
			wantCode: codes.ResourceExhausted, wantMsg: []string{"upstream returned 429 rate_limit_exceeded", "retry after 1h0m0s"},
			wantRequests: 1,
		},
		{
			name: "429 with Retry-After: 3 past the caller's 2s deadline", handler: statusThenOK(429, -1, "3"), deadline: 2 * time.Second,
			wantCode: codes.ResourceExhausted, wantMsg: []string{"retry after 3s"}, wantRequests: 1,
		},
		{
			name: "429 twice with Retry-After: 1, then OK", handler: statusThenOK(429, 2, "1"), deadline: 5 * time.Second,
			wantCode: codes.OK, wantRequests: 3, minElapsed: 2 * time.Second,
		},
		{
			name: "5xx burst (503 twice, then OK)", handler: statusThenOK(503, 2, ""), deadline: 5 * time.Second,
			wantCode: codes.OK, wantRequests: 3,
		},
		{
			name: "5xx storm (500 forever)", handler: statusThenOK(500, -1, ""), deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream returned 500 server_error (unavailable) (after 3 attempts)"}, wantRequests: 3,
		},
		{
			name: "TLS server with an untrusted certificate", tls: true, handler: hang, deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream unavailable:", "certificate signed by unknown authority"}, wantRequests: 0,
		},
		{
			name: "DNS failure (.invalid host)", url: "http://scavio.invalid", deadline: 5 * time.Second,
			wantCode: codes.Unavailable, wantMsg: []string{"upstream unavailable:", "scavio.invalid"}, wantRequests: -1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			handler := tc.handler
			if handler == nil {
				handler = hang
			}
			f := startFaultUpstream(t, tc.tls, handler)
			url := f.url
			if tc.url != "" {
				url = tc.url
			}
			s := newFaultStack(t, url, tc.cfg)

			ctx, cancel := context.WithTimeout(withToken(s.token), tc.deadline)
			start := time.Now()
			resp, err := s.search.Search(ctx, &pb.SearchRequest{Query: "fault injection"})
			elapsed := time.Since(start)
			cancel()
			s.close()
			f.close()

			t.Logf("%s: code=%s elapsed=%s upstream requests=%d connections=%d msg=%q", tc.name, codeOf(err), elapsed.Round(time.Millisecond), f.requests.Load(), f.conns.Load(), msgOf(err))
			if tc.wantCode == codes.OK {
				if err != nil || len(resp.Results) != 5 {
					t.Fatalf("want 5 results, got %v %v", resp, err)
				}
			} else {
				requireGRPCStatus(t, err, tc.wantCode, "")
				for _, m := range tc.wantMsg {
					requireGRPCStatus(t, err, tc.wantCode, m)
				}
				if len(tc.wantMsgOneOf) > 0 && !slices.ContainsFunc(tc.wantMsgOneOf, func(m string) bool { return strings.Contains(msgOf(err), m) }) {
					t.Fatalf("message %q contains none of %q", msgOf(err), tc.wantMsgOneOf)
				}
			}
			// No upper bound on the time: on a loaded machine it flips, and it proves nothing the
			// code and message do not (a failure that waited for the caller's deadline would be
			// DeadlineExceeded). The lower bound is what load cannot break: a wait honoured.
			if elapsed < tc.minElapsed {
				t.Errorf("took %s: the upstream's wait (%s) was not honoured", elapsed, tc.minElapsed)
			}
			if tc.wantRequests >= 0 && f.requests.Load() != tc.wantRequests {
				t.Errorf("upstream saw %d requests, want %d", f.requests.Load(), tc.wantRequests)
			}
			goleak.VerifyNone(t, ignore)
		})
	}
}

func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	s, _ := status.FromError(err)
	return s.Code()
}

func msgOf(err error) string {
	if err == nil {
		return ""
	}
	s, _ := status.FromError(err)
	return s.Message()
}

// A 429 storm with Retry-After: 1 costs one rejected call per window, not one per caller: after
// the first wave (six callers in flight together, before anyone knew), one probe goes alone and
// the other five follow only once it succeeds (issue 16 §7: before, all six retried together).
func TestRateLimitStormProbesAlone(t *testing.T) {
	const callers = 6
	var (
		wave1    = make(chan struct{}) // closed when all of the first wave has arrived
		arrived  atomic.Int64
		inFlight atomic.Int64
		overlap  atomic.Int64 // requests that arrived while the probe was held
	)
	handler := func(f *faultUpstream, w http.ResponseWriter, r *http.Request) {
		n := arrived.Add(1)
		switch {
		case n < callers:
			<-wave1 // hold the first wave until it is all in flight, so it is one wave
			writeScavioError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "1")
		case n == callers:
			close(wave1)
			writeScavioError(w, http.StatusTooManyRequests, "rate_limit_exceeded", "1")
		case n == callers+1:
			// The probe. Hold it a while: without the gate the other five retries would arrive
			// now (they all waited the same second). With it none can, so holding longer can
			// only make this test stricter, never flip it.
			inFlight.Add(1)
			select {
			case <-time.After(500 * time.Millisecond):
			case <-r.Context().Done():
			}
			inFlight.Add(-1)
			w.Header().Set("Content-Type", "application/json")
			w.Write(scavioBody(5))
		default:
			if inFlight.Load() > 0 {
				overlap.Add(1)
			}
			w.Header().Set("Content-Type", "application/json")
			w.Write(scavioBody(5))
		}
	}
	f := startFaultUpstream(t, false, handler)
	defer f.close()
	s := newFaultStack(t, f.url, upstream.Config{})
	defer s.close()

	errs := make(chan error, callers)
	for i := range callers {
		go func() {
			ctx, cancel := context.WithTimeout(withToken(s.token), 20*time.Second)
			defer cancel()
			_, err := s.search.Search(ctx, &pb.SearchRequest{Query: fmt.Sprintf("storm %d", i)}) // distinct: no cache sharing
			errs <- err
		}()
	}
	for range callers {
		if err := <-errs; err != nil {
			t.Errorf("a caller failed: %v", err)
		}
	}
	if n := overlap.Load(); n != 0 {
		t.Errorf("%d retries reached the upstream while the probe was in flight", n)
	}
	// 6 rejected in the first wave, 1 probe, 5 followers: 12 in all, 6 of them rejected.
	if n := f.requests.Load(); n != 2*callers {
		t.Errorf("upstream saw %d requests, want %d (one rejected wave, one probe, the rest)", n, 2*callers)
	}
}

// bigResults answers n results whose snippets are size bytes each: a large answer within the
// upstream cap (4 MiB).
func bigResults(n, size int) func(*faultUpstream, http.ResponseWriter, *http.Request) {
	return func(_ *faultUpstream, w http.ResponseWriter, _ *http.Request) {
		resp := scaviotest.SearchResponse{Query: "q", CreditsUsed: 1}
		for i := range n {
			resp.Results = append(resp.Results, scaviotest.Result{Title: fmt.Sprintf("Result %d", i+1), URL: fmt.Sprintf("https://example.com/%d", i+1),
				Snippet: strings.Repeat("x", size), Position: i + 1})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	}
}

// A 3.6 MB answer (under the upstream cap) is trimmed to the results asked for; when what was
// asked for cannot fit in a message a default gRPC client accepts, the caller is told so plainly
// (issue 16 §2: brokerd sent 7.3 MB and every client failed with a transport error).
func TestLargeAnswers(t *testing.T) {
	f := startFaultUpstream(t, false, bigResults(100, 36<<10)) // 100 × 36 KiB ≈ 3.6 MB
	defer f.close()
	s := newFaultStack(t, f.url, upstream.Config{})
	defer s.close()

	for _, tc := range []struct {
		num      int32
		wantCode codes.Code
		wantN    int
	}{
		{0, codes.OK, 5},   // the default count (broker.DefaultNumResult)
		{20, codes.OK, 20}, // 20 × 2 × 36 KiB (typed snippet + raw) ≈ 1.5 MB
		{100, codes.OutOfRange, 0},
	} {
		t.Run(fmt.Sprintf("num_results=%d", tc.num), func(t *testing.T) {
			// The second call is a cache hit, which sends the encoding kept with the answer: it is
			// trimmed and bounded alike.
			for _, hit := range []bool{false, true} {
				// A default client: no raised receive limit.
				resp, err := s.search.Search(withToken(s.token), &pb.SearchRequest{Query: fmt.Sprintf("big %d", tc.num), NumResults: tc.num})
				if tc.wantCode == codes.OK {
					if err != nil {
						t.Fatal(err)
					}
					if len(resp.Results) != tc.wantN || resp.Cached != hit {
						t.Fatalf("%d results (cached %v), want %d (cached %v)", len(resp.Results), resp.Cached, tc.wantN, hit)
					}
					continue
				}
				requireGRPCStatus(t, err, tc.wantCode, "upstream response too large")
				requireGRPCStatus(t, err, tc.wantCode, "ask for fewer results")
			}
		})
	}
}
