package upstream_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/limiter"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

const testKey = "sk_test_Zq9Xw2Lk7Pm4Rt8Yv1"

// sleeper records the waits Do asks for instead of sleeping.
type sleeper struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleeper) Sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeper) Waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

// server is an httptest server that counts hits and answers with handle(hit number, w, r).
type server struct {
	*httptest.Server
	hits atomic.Int32
}

func newServer(t *testing.T, handle func(n int, w http.ResponseWriter, r *http.Request)) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(s.hits.Add(1))
		handle(n, w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func newClient(t *testing.T, baseURL string, cfg upstream.Config) (*upstream.Client, *sleeper) {
	t.Helper()
	sl := &sleeper{}
	cfg.BaseURL = baseURL
	if cfg.Sleep == nil {
		cfg.Sleep = sl.Sleep
	}
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, sl
}

func reply(status int, body string, hdr ...string) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func searchReq() upstream.Request {
	return upstream.Request{Path: "/api/v1/search", Auth: upstream.AuthAPIKeyHeader, Body: []byte(`{"query":"go","num_results":5}`)}
}

func TestRequestHeadersAndBody(t *testing.T) {
	type seen struct {
		method, path, apiKey, authz, contentType, body string
	}
	tests := []struct {
		name     string
		basePath string
		req      upstream.Request
		want     seen
	}{
		{
			name: "contract A x-api-key",
			req:  upstream.Request{Path: "/api/v1/search", Auth: upstream.AuthAPIKeyHeader, Body: []byte(`{"query":"go","num_results":5}`)},
			want: seen{method: "POST", path: "/api/v1/search", apiKey: testKey, contentType: "application/json", body: `{"query":"go","num_results":5}`},
		},
		{
			name: "contract B bearer",
			req:  upstream.Request{Path: "/api/v1/google", Auth: upstream.AuthBearer, Body: []byte(`{"query":"go"}`)},
			want: seen{method: "POST", path: "/api/v1/google", authz: "Bearer " + testKey, contentType: "application/json", body: `{"query":"go"}`},
		},
		{
			name:     "base URL with path prefix",
			basePath: "/proxy/",
			req:      upstream.Request{Path: "/api/v1/google", Auth: upstream.AuthBearer, Body: []byte(`{}`)},
			want:     seen{method: "POST", path: "/proxy/api/v1/google", authz: "Bearer " + testKey, contentType: "application/json", body: `{}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got seen
			srv := newServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				got = seen{r.Method, r.URL.Path, r.Header.Get("x-api-key"), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), string(b)}
				w.Header().Set("X-RateLimit-Remaining", "7")
				io.WriteString(w, `{"results":[]}`)
			})
			c, _ := newClient(t, srv.URL+tt.basePath, upstream.Config{})
			resp, err := c.Do(context.Background(), tt.req, []byte(testKey))
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			if got != tt.want {
				t.Errorf("server saw %+v, want %+v", got, tt.want)
			}
			if resp.Status != 200 || string(resp.Body) != `{"results":[]}` || resp.Header.Get("X-RateLimit-Remaining") != "7" {
				t.Errorf("response = %d %q %v", resp.Status, resp.Body, resp.Header)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name       string
		handle     func(int, http.ResponseWriter, *http.Request)
		maxBytes   int64
		wantKind   error
		wantStatus int
		wantCode   string
		wantHits   int
		wantMsg    string
	}{
		{"400", reply(400, `{"error":{"code":"bad_request","message":"query missing"}}`), 0, upstream.ErrBadRequest, 400, "bad_request", 1, "upstream returned 400 bad_request"},
		{"401", reply(401, `{"error":{"code":"unauthorized","message":"invalid api key"}}`), 0, upstream.ErrRejected, 401, "unauthorized", 1, "upstream returned 401 unauthorized (rejected the credential)"},
		{"402", reply(402, `{"error":{"code":"insufficient_credits","message":"top up"}}`), 0, upstream.ErrInsufficientCredits, 402, "insufficient_credits", 1, "402 insufficient_credits"},
		{"403", reply(403, `{"error":{"code":"forbidden","message":"nope"}}`), 0, upstream.ErrRejected, 403, "forbidden", 1, "403 forbidden"},
		{"404 is a bad request", reply(404, `not json`), 0, upstream.ErrBadRequest, 404, "", 1, "upstream returned 404 ("},
		{"429 retried then reported", reply(429, `{"error":{"code":"rate_limit_exceeded","message":"slow down"}}`), 0, upstream.ErrRateLimited, 429, "rate_limit_exceeded", 3, "429 rate_limit_exceeded (rate limit exceeded) (after 3 attempts)"},
		{"500", reply(500, `{"error":{"code":"internal_error","message":"boom"}}`), 0, upstream.ErrUnavailable, 500, "internal_error", 3, "500 internal_error"},
		{"503 without body", reply(503, ``), 0, upstream.ErrUnavailable, 503, "", 3, "upstream returned 503 (unavailable)"},
		{"code that is not a code is dropped", reply(400, `{"error":{"code":"Bad Code; rm -rf","message":"x"}}`), 0, upstream.ErrBadRequest, 400, "", 1, "upstream returned 400 ("},
		{"code that is the key is dropped", reply(401, `{"error":{"code":"sk_test_","message":"x"}}`), 0, upstream.ErrRejected, 401, "", 1, "upstream returned 401 ("},
		{"200 malformed JSON", reply(200, `{"results": [`), 0, upstream.ErrBadResponse, 200, "", 1, "not valid JSON"},
		{"200 empty body", reply(200, ``), 0, upstream.ErrBadResponse, 200, "", 1, "not valid JSON"},
		{"200 too large with Content-Length", reply(200, `{"results":"`+strings.Repeat("x", 100)+`"}`), 64, upstream.ErrResponseTooLarge, 200, "", 1, "64-byte limit exceeded (Config.MaxResponseBytes)"},
		{"200 too large chunked", func(_ int, w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, `{"results":"`)
			w.(http.Flusher).Flush() // forces chunked encoding: no Content-Length to check up front
			io.WriteString(w, strings.Repeat("x", 100)+`"}`)
		}, 64, upstream.ErrResponseTooLarge, 200, "", 1, "64-byte limit exceeded"},
		{"200 truncated body", func(_ int, w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, `{"results":`)
		}, 0, upstream.ErrBadResponse, 200, "", 1, "truncated"},
		{"302 is not followed", func(_ int, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
		}, 0, upstream.ErrBadResponse, 302, "", 1, "unexpected status 302"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, tt.handle)
			c, _ := newClient(t, srv.URL, upstream.Config{MaxResponseBytes: tt.maxBytes})
			resp, err := c.Do(context.Background(), searchReq(), []byte(testKey))
			if err == nil {
				t.Fatalf("Do = %+v, want error", resp)
			}
			requireError(t, err, tt.wantKind, tt.wantStatus, tt.wantCode, tt.wantMsg)
			if got := int(srv.hits.Load()); got != tt.wantHits {
				t.Errorf("server hits = %d, want %d", got, tt.wantHits)
			}
		})
	}
}

func requireError(t *testing.T, err error, kind error, status int, code, msg string) *upstream.Error {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not *upstream.Error", err, err)
	}
	if !errors.Is(err, kind) || ue.Kind != kind {
		t.Errorf("kind = %v, want %v", ue.Kind, kind)
	}
	if ue.Status != status {
		t.Errorf("status = %d, want %d", ue.Status, status)
	}
	if ue.Code != code {
		t.Errorf("code = %q, want %q", ue.Code, code)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("message %q does not contain %q", err.Error(), msg)
	}
	return ue
}

func TestRetryAfter(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name           string
		status         int
		headers        []string
		cfg            upstream.Config
		timeout        time.Duration
		wantErr        error         // nil: the retry succeeds
		wantRetryAfter time.Duration // on the error
		wantWaits      []time.Duration
		slack          time.Duration // tolerance for waits computed from a clock
		wantHits       int
		// wantPastDeadline: the error says only ctx's deadline stopped the wait (Error.PastDeadline).
		wantPastDeadline bool
	}{
		{name: "Retry-After seconds", status: 429, headers: []string{"Retry-After", "3"},
			wantWaits: []time.Duration{3 * time.Second}, wantHits: 2},
		{name: "Retry-After HTTP-date", status: 429, headers: []string{"Retry-After", now.Add(5 * time.Second).UTC().Format(http.TimeFormat)},
			wantWaits: []time.Duration{5 * time.Second}, slack: 1100 * time.Millisecond, wantHits: 2},
		{name: "X-RateLimit-Reset", status: 429, headers: []string{"X-RateLimit-Reset", fmt.Sprint(now.Unix() + 4)},
			wantWaits: []time.Duration{4 * time.Second}, slack: 1100 * time.Millisecond, wantHits: 2},
		{name: "Retry-After wins over X-RateLimit-Reset", status: 429, headers: []string{"Retry-After", "2", "X-RateLimit-Reset", fmt.Sprint(now.Unix() + 9)},
			wantWaits: []time.Duration{2 * time.Second}, wantHits: 2},
		{name: "503 Retry-After honoured", status: 503, headers: []string{"Retry-After", "1"},
			wantWaits: []time.Duration{time.Second}, wantHits: 2},
		{name: "longer than MaxRetryAfter is returned, not waited", status: 429, headers: []string{"Retry-After", "60"},
			wantErr: upstream.ErrRateLimited, wantRetryAfter: time.Minute, wantHits: 1},
		{name: "custom MaxRetryAfter", status: 429, headers: []string{"Retry-After", "3"}, cfg: upstream.Config{MaxRetryAfter: 2 * time.Second},
			wantErr: upstream.ErrRateLimited, wantRetryAfter: 3 * time.Second, wantHits: 1},
		{name: "beyond ctx deadline is returned at once", status: 429, headers: []string{"Retry-After", "3"}, timeout: 2 * time.Second,
			wantErr: upstream.ErrRateLimited, wantRetryAfter: 3 * time.Second, wantHits: 1, wantPastDeadline: true},
		{name: "5xx beyond ctx deadline", status: 500, headers: []string{"Retry-After", "5"}, timeout: time.Second,
			wantErr: upstream.ErrUnavailable, wantRetryAfter: 5 * time.Second, wantHits: 1, wantPastDeadline: true},
		{name: "backoff beyond ctx deadline", status: 500, cfg: upstream.Config{BackoffBase: time.Hour}, timeout: time.Second,
			wantErr: upstream.ErrUnavailable, wantRetryAfter: 2500 * time.Millisecond, slack: 2500 * time.Millisecond, wantHits: 1, wantPastDeadline: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					reply(tt.status, `{"error":{"code":"x","message":"y"}}`, tt.headers...)(n, w, r)
					return
				}
				io.WriteString(w, `{"results":[]}`)
			})
			c, sl := newClient(t, srv.URL, tt.cfg)
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			_, err := c.Do(ctx, searchReq(), []byte(testKey))
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Do: %v", err)
			case tt.wantErr != nil:
				var ue *upstream.Error
				if !errors.As(err, &ue) || !errors.Is(err, tt.wantErr) {
					t.Fatalf("Do error = %v, want %v", err, tt.wantErr)
				}
				if d := ue.RetryAfter - tt.wantRetryAfter; d < -tt.slack || d > tt.slack {
					t.Errorf("RetryAfter = %v, want %v±%v", ue.RetryAfter, tt.wantRetryAfter, tt.slack)
				}
				if !strings.Contains(err.Error(), "; retry after ") {
					t.Errorf("message %q does not say when to retry", err)
				}
				if ue.PastDeadline != tt.wantPastDeadline {
					t.Errorf("PastDeadline = %v, want %v", ue.PastDeadline, tt.wantPastDeadline)
				}
			}
			waits := sl.Waits()
			if len(waits) != len(tt.wantWaits) {
				t.Fatalf("waits = %v, want %v", waits, tt.wantWaits)
			}
			for i := range waits {
				if d := waits[i] - tt.wantWaits[i]; d < -tt.slack || d > tt.slack {
					t.Errorf("wait[%d] = %v, want %v±%v", i, waits[i], tt.wantWaits[i], tt.slack)
				}
			}
			if got := int(srv.hits.Load()); got != tt.wantHits {
				t.Errorf("server hits = %d, want %d", got, tt.wantHits)
			}
		})
	}
}

func TestMaxRetries(t *testing.T) {
	tests := []struct {
		name       string
		maxRetries int
		wantHits   int
	}{
		{"default is 2", 0, 3},
		{"explicit 4", 4, 5},
		{"negative disables", -1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, reply(500, `{}`))
			c, sl := newClient(t, srv.URL, upstream.Config{MaxRetries: tt.maxRetries, BackoffBase: 100 * time.Millisecond})
			_, err := c.Do(context.Background(), searchReq(), []byte(testKey))
			if !errors.Is(err, upstream.ErrUnavailable) {
				t.Fatalf("Do error = %v, want ErrUnavailable", err)
			}
			if got := int(srv.hits.Load()); got != tt.wantHits {
				t.Errorf("server hits = %d, want %d", got, tt.wantHits)
			}
			waits := sl.Waits()
			if len(waits) != tt.wantHits-1 {
				t.Fatalf("waits = %v, want %d of them", waits, tt.wantHits-1)
			}
			// Exponential with equal jitter: retry n waits within [base*2^(n-1)/2, base*2^(n-1)].
			for i, w := range waits {
				hi := 100 * time.Millisecond << i
				if w < hi/2 || w > hi {
					t.Errorf("wait[%d] = %v, want within [%v, %v]", i, w, hi/2, hi)
				}
			}
		})
	}
}

func TestTransportErrorsRetried(t *testing.T) {
	// A listener we close at once gives a loopback port that refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, sl := newClient(t, "http://"+addr, upstream.Config{})
	_, err = c.Do(context.Background(), searchReq(), []byte(testKey))
	ue := requireError(t, err, upstream.ErrUnavailable, 0, "", "upstream unavailable: Post ")
	if len(sl.Waits()) != 2 || !strings.Contains(ue.Error(), "(after 3 attempts)") {
		t.Errorf("waits = %v, message %q: want 2 retries", sl.Waits(), ue)
	}
}

func TestAttemptTimeoutRetried(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		io.WriteString(w, `{"results":[]}`)
	})
	c, _ := newClient(t, srv.URL, upstream.Config{AttemptTimeout: 100 * time.Millisecond})
	if _, err := c.Do(context.Background(), searchReq(), []byte(testKey)); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("server hits = %d, want 2", got)
	}
}

func TestContextEnds(t *testing.T) {
	slow := func(_ int, w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // lets the server notice the client hanging up
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
	t.Run("deadline", func(t *testing.T) {
		srv := newServer(t, slow)
		c, _ := newClient(t, srv.URL, upstream.Config{Sleep: func(ctx context.Context, d time.Duration) error { return nil }})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Do(ctx, searchReq(), []byte(testKey))
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("Do returned after %v, long past its 100ms deadline", el)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, upstream.ErrUnavailable) {
			t.Fatalf("Do error = %v, want DeadlineExceeded and ErrUnavailable", err)
		}
		if srv.hits.Load() != 1 {
			t.Errorf("server hits = %d, want 1", srv.hits.Load())
		}
	})
	t.Run("canceled", func(t *testing.T) {
		srv := newServer(t, slow)
		c, _ := newClient(t, srv.URL, upstream.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := c.Do(ctx, searchReq(), []byte(testKey))
		if !errors.Is(err, context.Canceled) || errors.Is(err, upstream.ErrUnavailable) {
			t.Fatalf("Do error = %v, want Canceled and not ErrUnavailable", err)
		}
	})
	t.Run("already done", func(t *testing.T) {
		srv := newServer(t, slow)
		c, _ := newClient(t, srv.URL, upstream.Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Do(ctx, searchReq(), []byte(testKey)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Do error = %v, want Canceled", err)
		}
		if srv.hits.Load() != 0 {
			t.Errorf("server hits = %d, want 0", srv.hits.Load())
		}
	})
}

// keyForms is every encoding of key that redaction must find, as an upstream might echo it.
func keyForms(key string) []string { return upstream.StdlibForms([]byte(key)) }

func TestKeyNeverInErrors(t *testing.T) {
	// Every way an upstream might hand the key back to us, in the body and headers of each kind of
	// failure Do reports.
	echo := func(status int) func(int, http.ResponseWriter, *http.Request) {
		return func(_ int, w http.ResponseWriter, r *http.Request) {
			k := r.Header.Get("x-api-key")
			forms := strings.Join(keyForms(k), " ")
			w.Header().Set("X-Echo", k)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":{"code":%q,"message":"bad key %s"}}`, k, forms)
		}
	}
	tests := []struct {
		name   string
		handle func(int, http.ResponseWriter, *http.Request)
	}{
		{"401 echoes key", echo(401)},
		{"403 echoes key", echo(403)},
		{"500 echoes key", echo(500)},
		{"429 echoes key", echo(429)},
		{"200 non-JSON echoes key", reply(200, "key="+testKey)},
		{"scaviotest 401 EchoKey", nil},
		{"scaviotest 500 EchoKey", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var base string
			switch tt.name {
			case "scaviotest 401 EchoKey":
				fake := scaviotest.NewServer() // no valid keys
				t.Cleanup(fake.Close)
				fake.SetFault(scaviotest.Fault{EchoKey: true})
				base = fake.URL
			case "scaviotest 500 EchoKey":
				fake := scaviotest.NewServer(testKey)
				t.Cleanup(fake.Close)
				fake.SetFault(scaviotest.Fault{Status: 500, EchoKey: true})
				base = fake.URL
			default:
				base = newServer(t, tt.handle).URL
			}
			c, _ := newClient(t, base, upstream.Config{})
			_, err := c.Do(context.Background(), searchReq(), []byte(testKey))
			if err == nil {
				t.Fatal("Do succeeded, want error")
			}
			for _, s := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				for _, f := range append(keyForms(testKey), "bad key", "invalid api key") {
					if strings.Contains(s, f) {
						t.Errorf("error text %q contains %q", s, f)
					}
				}
			}
		})
	}
}

// rawUpstream accepts connections on loopback and answers each request with the bytes answer
// makes of the x-api-key it carried, whatever HTTP they form.
func rawUpstream(t *testing.T, answer func(key string) string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.WriteString(c, answer(req.Header.Get("X-Api-Key")))
			}()
		}
	}()
	return "http://" + lis.Addr().String()
}

// TestKeyNeverInQuotedTransportErrors: an upstream whose status line echoes the key makes
// net/http quote it in its error (`malformed HTTP status code "…"`, `malformed HTTP response
// "…"`); a key holding '"' and '\\' — valid in a header, so an operator may store one — then
// appears escaped there, and the error, and the log line holding it, must still not carry the key
// in its raw, Go-quoted or JSON-escaped form.
func TestKeyNeverInQuotedTransportErrors(t *testing.T) {
	const key = `sk_live_"q\\x<&`
	quoted := strconv.Quote(key)
	forms := []string{key, quoted[1 : len(quoted)-1], strings.Trim(string(must(json.Marshal(key))), `"`)}
	for _, tt := range []struct {
		name   string
		answer func(key string) string
	}{
		{"status code", func(k string) string { return "HTTP/1.1 " + k + "\r\n\r\n" }},
		{"status line", func(k string) string { return k + "\r\n\r\n" }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newClient(t, rawUpstream(t, tt.answer), upstream.Config{MaxRetries: -1})
			_, err := c.Do(context.Background(), searchReq(), []byte(key))
			if err == nil {
				t.Fatal("Do succeeded, want error")
			}
			if !strings.Contains(err.Error(), "malformed HTTP") || !strings.Contains(err.Error(), "[REDACTED]") {
				t.Fatalf("error %q: want net/http's malformed-response error with the key redacted", err)
			}
			var logs bytes.Buffer
			slog.New(slog.NewJSONHandler(&logs, nil)).Warn("upstream call failed", "err", err)
			slog.New(slog.NewTextHandler(&logs, nil)).Warn("upstream call failed", "err", err)
			for _, text := range []string{err.Error(), fmt.Sprintf("%q", err), logs.String()} {
				for _, f := range forms {
					if strings.Contains(text, f) {
						t.Errorf("%q holds the key as %q", text, f)
					}
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestInvalidKeyNotSent(t *testing.T) {
	srv := newServer(t, reply(200, `{}`))
	c, _ := newClient(t, srv.URL, upstream.Config{})
	for _, key := range []string{"", "sk_test_x\r\nX-Evil: 1", "sk test", "sk_test_\x00", "ключ"} {
		_, err := c.Do(context.Background(), searchReq(), []byte(key))
		if !errors.Is(err, upstream.ErrInvalidKey) {
			t.Errorf("Do(key %q) error = %v, want ErrInvalidKey", key, err)
		}
		if err != nil && key != "" && strings.Contains(err.Error(), key) {
			t.Errorf("error %q contains the key", err)
		}
	}
	if srv.hits.Load() != 0 {
		t.Errorf("server hits = %d, want 0", srv.hits.Load())
	}
}

func TestBadRequestPath(t *testing.T) {
	srv := newServer(t, reply(200, `{}`))
	c, _ := newClient(t, srv.URL, upstream.Config{})
	for _, p := range []string{"", "api/v1/search", "/api/../admin", "/api/v1/search?x=1", "/a#b", "//evil.example/x"} {
		req := searchReq()
		req.Path = p
		if _, err := c.Do(context.Background(), req, []byte(testKey)); err == nil {
			t.Errorf("Do(path %q) succeeded, want error", p)
		}
	}
	if srv.hits.Load() != 0 {
		t.Errorf("server hits = %d, want 0", srv.hits.Load())
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     upstream.Config
		wantErr string
	}{
		{"empty", upstream.Config{}, "BaseURL is required"},
		{"scheme", upstream.Config{BaseURL: "ftp://api.scavio.dev"}, "http or https"},
		{"no scheme", upstream.Config{BaseURL: "api.scavio.dev"}, "http or https"},
		{"no host", upstream.Config{BaseURL: "https://"}, "must name a host"},
		{"user info", upstream.Config{BaseURL: "https://u:sk_live_secret@api.scavio.dev"}, "user info"},
		{"query", upstream.Config{BaseURL: "https://api.scavio.dev/?key=x"}, "query or fragment"},
		{"unparsable", upstream.Config{BaseURL: "https://sk_live_secret@[::1"}, "not a valid URL"},
		{"negative timeout", upstream.Config{BaseURL: "https://api.scavio.dev", AttemptTimeout: -1}, "AttemptTimeout"},
		{"negative bytes", upstream.Config{BaseURL: "https://api.scavio.dev", MaxResponseBytes: -1}, "MaxResponseBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := upstream.New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q echoes the URL", err)
			}
		})
	}
	if _, err := upstream.New(upstream.Config{BaseURL: "https://api.scavio.dev"}); err != nil {
		t.Errorf("New(valid) = %v", err)
	}
}

func TestConnectionsReused(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-api-key") == "sk_test_bad" {
			reply(401, `{"error":{"code":"unauthorized","message":"`+strings.Repeat("x", 8<<10)+`"}}`)(0, w, r)
			return
		}
		reply(200, `{"results":[`+strings.Repeat(`{"t":"x"},`, 500)+`{}]}`)(0, w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, _ := newClient(t, srv.URL, upstream.Config{})
	for i := range 6 {
		key := testKey
		if i%2 == 1 {
			key = "sk_test_bad"
		}
		c.Do(context.Background(), searchReq(), []byte(key))
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 6 sequential calls, want 1 (bodies not drained?)", n)
	}
}

func TestAgainstFake(t *testing.T) {
	fake := scaviotest.NewServer(testKey)
	t.Cleanup(fake.Close)
	c, _ := newClient(t, fake.URL, upstream.Config{})
	for _, req := range []upstream.Request{
		searchReq(),
		{Path: scaviotest.GooglePath, Auth: upstream.AuthBearer, Body: []byte(`{"query":"go","search_type":"news"}`)},
	} {
		resp, err := c.Do(context.Background(), req, []byte(testKey))
		if err != nil {
			t.Fatalf("Do(%s): %v", req.Path, err)
		}
		if resp.Header.Get("X-RateLimit-Limit") == "" || !strings.Contains(string(resp.Body), `"title":"Result 1 for go"`) {
			t.Errorf("Do(%s) = %s %v", req.Path, resp.Body, resp.Header)
		}
	}
	// The fake insists on each contract's own auth style.
	_, err := c.Do(context.Background(), upstream.Request{Path: scaviotest.GooglePath, Auth: upstream.AuthAPIKeyHeader, Body: []byte(`{"query":"go"}`)}, []byte(testKey))
	if !errors.Is(err, upstream.ErrRejected) {
		t.Errorf("x-api-key on contract B: %v, want ErrRejected", err)
	}
}

func TestRedact(t *testing.T) {
	key := []byte("sk_live_a/b+c=d?e&f~ü")
	forms := append(keyForms(string(key)),
		url.PathEscape(string(key)),
		strings.ToLower(url.QueryEscape(string(key))), // some encoders use lower-case %xx
	)
	for _, f := range forms {
		in := "before " + f + " middle " + f + " after"
		if got, want := upstream.Redact(in, key), "before [REDACTED] middle [REDACTED] after"; got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	if got := upstream.Redact("nothing here", key); got != "nothing here" {
		t.Errorf("Redact changed a string without the key: %q", got)
	}
	if got := upstream.Redact("sk_live_a", nil); got != "sk_live_a" {
		t.Errorf("Redact with empty key = %q", got)
	}
	// The padded base64 contains the raw base64 as a prefix: longest-first replacement must not
	// leave the padding behind.
	k2 := []byte("sk_test_1")  // 9 bytes: base64 without padding
	k3 := []byte("sk_test_12") // 10 bytes: base64 ends in "=="
	for _, k := range [][]byte{k2, k3} {
		in := base64.StdEncoding.EncodeToString(k) + "|" + base64.URLEncoding.EncodeToString(k)
		if got := upstream.Redact(in, k); got != "[REDACTED]|[REDACTED]" {
			t.Errorf("Redact(%q) = %q", in, got)
		}
	}
}

// jsonEscapeAll writes s as a JSON string with every byte \u-escaped, as some encoders do for
// non-alphanumerics and a hostile upstream might for everything.
func jsonEscapeAll(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, `\u%04x`, s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// TestKeyNeverInSuccess: an upstream that reflects the key in a 2xx answer (results, metadata,
// nested strings, object names, JSON escapes, headers) has it redacted before the Response
// leaves the client, and the reflection is reported.
func TestKeyNeverInSuccess(t *testing.T) {
	const key = "sk_live_a/b+c=d~Zq9"
	slashed := strings.ReplaceAll(key, "/", `\/`) // PHP's json_encode escapes '/'
	var forms []string
	for _, f := range keyForms(key) {
		forms = append(forms, strconv.Quote(f))
	}
	body := `{"results":[{"title":"t","url":"https://x.test/?k=` + url.QueryEscape(key) + `","snippet":"your key is ` + slashed + `"}],` +
		`"metadata":{"echo":` + jsonEscapeAll(key) + `,"forms":[` + strings.Join(forms, ",") + `],` +
		`"nested":{"deeper":["` + slashed + `"]},"` + slashed + `":1,"credits_used":1},"query":"go"}`
	if !json.Valid([]byte(body)) {
		t.Fatalf("test body is not JSON: %s", body)
	}
	srv := newServer(t, reply(200, body, "X-Echo", "key="+key, "X-Echo-B64", base64.StdEncoding.EncodeToString([]byte(key)),
		"X-RateLimit-Remaining", "8"))
	c, _ := newClient(t, srv.URL, upstream.Config{})
	resp, err := c.Do(context.Background(), searchReq(), []byte(key))
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if !json.Valid(resp.Body) {
		t.Fatalf("redacted body is not JSON: %s", resp.Body)
	}
	// Decoded, so that a form hidden behind an escape is found too.
	var decoded any
	json.Unmarshal(resp.Body, &decoded)
	flat := fmt.Sprintf("%v", decoded)
	for _, f := range append(keyForms(key), url.PathEscape(key)) {
		for _, where := range []string{string(resp.Body), flat, fmt.Sprint(resp.Header)} {
			if strings.Contains(where, f) {
				t.Errorf("response holds key form %q: %s", f, where)
			}
		}
	}
	for _, want := range []string{`"title":"t"`, `"credits_used":1`, `"query":"go"`} {
		if !strings.Contains(string(resp.Body), want) {
			t.Errorf("redaction lost %s: %s", want, resp.Body)
		}
	}
	if got := resp.Header.Get("X-RateLimit-Remaining"); got != "8" {
		t.Errorf("X-RateLimit-Remaining = %q, want 8 (headers without the key pass)", got)
	}
	// url, snippet, echo, 8 forms (some identical as JSON), nested, the object name, 2 headers.
	if resp.KeyReflected < 14 {
		t.Errorf("KeyReflected = %d, want at least 14", resp.KeyReflected)
	}

	// Without the key, nothing changes and nothing is reported.
	plain := `{"results":[{"title":"sk_live","url":"https:\/\/x.test"}],"n":12}`
	srv2 := newServer(t, reply(200, plain))
	c2, _ := newClient(t, srv2.URL, upstream.Config{})
	resp, err = c2.Do(context.Background(), searchReq(), []byte(key))
	if err != nil || string(resp.Body) != plain || resp.KeyReflected != 0 {
		t.Errorf("Do(no key in body) = %s, reflected %d, %v; want the body unchanged", resp.Body, resp.KeyReflected, err)
	}
}

func TestKeyReflectedInErrorReported(t *testing.T) {
	srv := newServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		fmt.Fprintf(w, `{"error":{"code":"unauthorized","message":"bad key %s"}}`, strings.ReplaceAll(r.Header.Get("x-api-key"), "_", `\u005f`))
	})
	c, _ := newClient(t, srv.URL, upstream.Config{})
	_, err := c.Do(context.Background(), searchReq(), []byte(testKey))
	ue := requireError(t, err, upstream.ErrRejected, 401, "unauthorized", "upstream returned 401 unauthorized")
	if !ue.KeyReflected {
		t.Error("KeyReflected = false for a 401 body echoing the key")
	}
	// A 2xx that is not JSON is not passed on, but its echo is reported too.
	srv = newServer(t, reply(200, "key="+testKey))
	c, _ = newClient(t, srv.URL, upstream.Config{})
	_, err = c.Do(context.Background(), searchReq(), []byte(testKey))
	if ue := requireError(t, err, upstream.ErrBadResponse, 200, "", "not valid JSON"); !ue.KeyReflected {
		t.Error("KeyReflected = false for a non-JSON 2xx echoing the key")
	}
}

func TestRedactJSON(t *testing.T) {
	key := []byte(`sk"live\x/1`)
	tests := []struct{ name, in, want string }{
		{"raw in string", `{"a":"x sk\"live\\x/1 y"}`, `{"a":"x [REDACTED] y"}`},
		{"escaped slash", `["sk\"live\\x\/1"]`, `["[REDACTED]"]`},
		{"unicode escapes", `["\u0073k\u0022live\u005cx/1"]`, `["[REDACTED]"]`},
		{"hex form", `{"h":"` + hex.EncodeToString(key) + `"}`, `{"h":"[REDACTED]"}`},
		{"object name", `{"sk\"live\\x/1":true}`, `{"[REDACTED]":true}`},
		{"untouched", `{"a":"sk\"live","n":-1.5e3,"t":true,"z":null}`, `{"a":"sk\"live","n":-1.5e3,"t":true,"z":null}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n := upstream.RedactJSON([]byte(tt.in), key)
			if string(got) != tt.want {
				t.Errorf("RedactJSON(%s) = %s, want %s", tt.in, got, tt.want)
			}
			if (n > 0) != (tt.in != tt.want) {
				t.Errorf("count = %d", n)
			}
			if !json.Valid(got) {
				t.Errorf("result not JSON: %s", got)
			}
		})
	}
	// Bodies that are not JSON are redacted before anyone checked them (the answer is decoded
	// after redaction): a body ending in a lone quote once panicked the scanner, and one ending
	// inside a string must still lose the key.
	for _, in := range []string{`{"a":"\n"}"`, `"`, `{"a":"sk\"live\\x/1`, `{"a":"x sk\"live\\x/1`} {
		got, _ := upstream.RedactJSON([]byte(in), key)
		if strings.Contains(string(got), `live\x/1`) || strings.Contains(string(got), `live\\x/1`) {
			t.Errorf("RedactJSON(%s) = %s: the key survived", in, got)
		}
	}
	// A key of digits echoed as a number becomes a string.
	got, n := upstream.RedactJSON([]byte(`{"id":12345678901234,"k":1}`), []byte("12345678901234"))
	if string(got) != `{"id":"[REDACTED]","k":1}` || n != 1 {
		t.Errorf("numeric key: %s, %d", got, n)
	}
}

// BenchmarkRedactJSON is the cost every 2xx answer now pays: a 10-result answer (about 3 KiB,
// the common case) and a 1 MiB one, neither holding the key.
func BenchmarkRedactJSON(b *testing.B) {
	key := []byte(testKey)
	escaped := `{"title":"Result %d for golang generics","url":"https:\/\/example.com\/classic\/%d?q=golang+generics","snippet":"Fake classic result %d about golang generics.","position":%d}`
	plain := strings.ReplaceAll(escaped, `\/`, `/`) // as Go's encoder writes it (scaviotest)
	for _, c := range []struct {
		name   string
		n      int
		result string
	}{{"", 10, escaped}, {"", 3500, escaped}, {"-noescapes", 10, plain}} {
		var parts []string
		for i := range c.n {
			parts = append(parts, fmt.Sprintf(c.result, i, i, i, i))
		}
		body := []byte(`{"query":"golang generics","results":[` + strings.Join(parts, ",") + `],"credits_used":1}`)
		b.Run(fmt.Sprintf("%dKiB%s", len(body)>>10, c.name), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, n := upstream.RedactJSON(body, key); n != 0 {
					b.Fatal("redacted a body without the key")
				}
			}
		})
	}
}

// FuzzRedactJSON: whatever valid JSON the upstream sends, the redacted body is valid JSON, and
// none of its strings or values, decoded, still holds the key.
func FuzzRedactJSON(f *testing.F) {
	f.Add([]byte(`{"a":"sk_test_Zq9Xw2Lk7Pm4Rt8Yv1","b":["x\/y","\u0073k_test_Zq9Xw2Lk7Pm4Rt8Yv1"],"c":1.5e3}`), "sk_test_Zq9Xw2Lk7Pm4Rt8Yv1")
	f.Add([]byte(`["a\"b\\c", "\ud83d\ude00 sk/1", null, true]`), "sk/1")
	f.Add([]byte(`{"n":123456789}`), "12345")
	f.Fuzz(func(t *testing.T, body []byte, key string) {
		// Keys are visible ASCII (HeaderSafe): the only ones Do sends.
		// A key inside the marker itself would be "found" in every redaction.
		if !json.Valid(body) || key == "" || len(key) > 64 || !upstream.HeaderSafe([]byte(key)) || strings.Contains("[REDACTED]", key) {
			return
		}
		out, n := upstream.RedactJSON(body, []byte(key))
		if !json.Valid(out) {
			t.Fatalf("RedactJSON(%q, %q) = %q: not JSON", body, key, out)
		}
		if n == 0 && string(out) != string(body) {
			t.Fatalf("changed the body but reported no change")
		}
		// Numbers as written (UseNumber): valid JSON may hold one no float64 can (1E700).
		var v any
		dec := json.NewDecoder(bytes.NewReader(out))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		var walk func(any)
		walk = func(v any) {
			switch x := v.(type) {
			case string:
				if strings.Contains(x, key) {
					t.Fatalf("RedactJSON(%q, %q): %q still holds the key", body, key, x)
				}
			case []any:
				for _, e := range x {
					walk(e)
				}
			case map[string]any:
				for k, e := range x {
					walk(k)
					walk(e)
				}
			}
		}
		walk(v)
	})
}

// A caller that gives up after its request reached the upstream does not throw away the answer:
// DoDetached lets the sent attempt finish and returns it. Before a connection, the caller's cancel
// still ends the attempt at once, and nothing was sent, so nothing may have been billed.
func TestDoDetached(t *testing.T) {
	t.Run("canceled after sending", func(t *testing.T) {
		arrived, release := make(chan struct{}), make(chan struct{})
		srv := newServer(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			close(arrived)
			<-release
			reply(200, `{"results":[],"credits_used":1}`)(0, w, r)
		})
		c, _ := newClient(t, srv.URL, upstream.Config{MaxRetries: -1})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-arrived
			cancel()
			close(release)
		}()
		resp, err := c.DoDetached(ctx, context.Background(), searchReq(), []byte(testKey))
		if err != nil || resp == nil || !strings.Contains(string(resp.Body), "credits_used") {
			t.Fatalf("DoDetached canceled after sending: %v %v, want the upstream's answer", resp, err)
		}
	})
	t.Run("canceled before a connection", func(t *testing.T) {
		dialing := make(chan struct{})
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			close(dialing)
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		c, _ := newClient(t, "http://127.0.0.1:9", upstream.Config{HTTPClient: &http.Client{Transport: tr}, MaxRetries: -1, AttemptTimeout: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-dialing; cancel() }()
		_, err := c.DoDetached(ctx, context.Background(), searchReq(), []byte(testKey))
		if !errors.Is(err, context.Canceled) || upstream.MayHaveBilled(err) {
			t.Fatalf("DoDetached canceled while dialing: %v (may have billed: %v), want Canceled and not billed", err, upstream.MayHaveBilled(err))
		}
	})
}

// MayHaveBilled is true exactly when a request may have been written and no error status answered
// it: what the broker refunds credits and uses by.
func TestMayHaveBilled(t *testing.T) {
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + refused.Addr().String()
	refused.Close()
	hold := func(_ int, w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}
	for _, tc := range []struct {
		name   string
		handle func(int, http.ResponseWriter, *http.Request)
		url    string
		want   bool
	}{
		{"500 answer", reply(500, `{"error":{"code":"internal_error"}}`), "", false},
		{"402 answer", reply(402, `{"error":{"code":"insufficient_credits"}}`), "", false},
		{"429 answer", reply(429, `{}`, "Retry-After", "3600"), "", false},
		{"connection refused", nil, refusedURL, false},
		{"2xx with a malformed body", reply(200, `{"results":[`), "", true},
		{"attempt timed out after sending", hold, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url
			if url == "" {
				url = newServer(t, tc.handle).URL
			}
			c, _ := newClient(t, url, upstream.Config{AttemptTimeout: 50 * time.Millisecond, MaxRetries: -1})
			_, err := c.Do(context.Background(), searchReq(), []byte(testKey))
			if err == nil {
				t.Fatal("Do succeeded")
			}
			if got := upstream.MayHaveBilled(err); got != tc.want {
				t.Fatalf("MayHaveBilled(%v) = %v, want %v", err, got, tc.want)
			}
		})
	}
}

// With Request.Decode, the client decodes the redacted body instead of checking it with a separate
// pass, and refuses what Decode refuses as it refuses a body that is not JSON.
func TestDecode(t *testing.T) {
	type decoded struct{ m map[string]any }
	decode := func(body []byte) (any, error) {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				return nil, err
			}
			return nil, errors.New("not an object")
		}
		return decoded{m}, nil
	}
	tests := []struct {
		name, body    string
		wantErr       string // "" for success
		wantReflected bool
	}{
		{"object", `{"a":"b"}`, "", false},
		{"key echoed is redacted before decoding", `{"a":"` + testKey + `"}`, "", true},
		{"malformed", `{"results": [`, "not valid JSON", false},
		{"empty", ``, "not valid JSON", false},
		{"not JSON, echoing the key", "key=" + testKey, "not valid JSON", true},
		{"Decode's own refusal", `[1,2]`, "upstream returned a malformed response: not an object", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, reply(200, tt.body))
			c, _ := newClient(t, srv.URL, upstream.Config{})
			req := searchReq()
			req.Decode = decode
			resp, err := c.Do(context.Background(), req, []byte(testKey))
			if tt.wantErr != "" {
				ue := requireError(t, err, upstream.ErrBadResponse, 200, "", tt.wantErr)
				if ue != nil && ue.KeyReflected != tt.wantReflected {
					t.Errorf("KeyReflected = %v, want %v", ue.KeyReflected, tt.wantReflected)
				}
				if !upstream.MayHaveBilled(err) {
					t.Error("a 2xx the client could not use is not reported as possibly billed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, ok := resp.Decoded.(decoded)
			if !ok {
				t.Fatalf("Decoded = %#v", resp.Decoded)
			}
			if (resp.KeyReflected > 0) != tt.wantReflected || strings.Contains(fmt.Sprint(d.m), testKey) {
				t.Errorf("decoded %v, KeyReflected %d: the key reached the decoder", d.m, resp.KeyReflected)
			}
		})
	}
}

// A body is read whole up to Config.MaxResponseBytes, sized from Content-Length when the upstream
// sends one and grown as it arrives when it does not (chunked); one byte more is too large either way.
func TestBodyAtTheLimit(t *testing.T) {
	const limit = 64
	body := func(n int) string { return `{"r":"` + strings.Repeat("x", n-len(`{"r":""}`)) + `"}` }
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		want    error
	}{
		{"Content-Length at the limit", limit, false, nil},
		{"chunked at the limit", limit, true, nil},
		{"Content-Length one over", limit + 1, false, upstream.ErrResponseTooLarge},
		{"chunked one over", limit + 1, true, upstream.ErrResponseTooLarge},
		{"Content-Length, small", 10, false, nil},
		// Above 256 KiB an announced body is grown as it arrives, not allocated up front.
		{"Content-Length, large", 300 << 10, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := body(tc.size)
			srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				if tc.chunked {
					w.(http.Flusher).Flush() // no Content-Length
				} else {
					w.Header().Set("Content-Length", fmt.Sprint(len(b)))
				}
				io.WriteString(w, b)
			})
			maxBytes := int64(limit)
			if tc.size > 1<<10 {
				maxBytes = 1 << 20 // the large body's case is about how it is read, not the limit
			}
			c, _ := newClient(t, srv.URL, upstream.Config{MaxResponseBytes: maxBytes})
			resp, err := c.Do(context.Background(), upstream.Request{Path: "/search", Body: []byte(`{}`)}, []byte(testKey))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Do: %v, want %v", err, tc.want)
			}
			if err == nil && string(resp.Body) != b {
				t.Errorf("body %q, want %q", resp.Body, b)
			}
		})
	}
}

// A panic in an attempt (in Request.Decode, where the broker recovers it so that only that call
// fails and brokerd goes on serving) must still settle the credential's gate. After a 429 the next
// attempt is the gate's probe and every other caller waits for its outcome; a probe that unwinds
// without settling would hold every later call with the key until its deadline, for as long as
// brokerd runs.
func TestPanicInProbeReleasesGate(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusTooManyRequests) // no Retry-After: the gate is half-open at once
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"results":[]}`)
	})
	c, _ := newClient(t, srv.URL, upstream.Config{MaxRetries: -1})
	ctx := upstream.WithGate(context.Background(), limiter.NewGate(nil))
	if _, err := c.Do(ctx, searchReq(), []byte(testKey)); !errors.Is(err, upstream.ErrRateLimited) {
		t.Fatalf("first call: %v, want ErrRateLimited", err)
	}
	// The probe: its answer's decoding panics.
	probe := searchReq()
	probe.Decode = func([]byte) (any, error) { panic("a bug in the decoder") }
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the decoder's panic did not reach the caller")
			}
		}()
		c.Do(ctx, probe, []byte(testKey))
	}()
	// The next call becomes the probe and is answered. The deadline only bounds the failure: the
	// call either goes at once or waits for a probe that never ends.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.Do(cctx, searchReq(), []byte(testKey)); err != nil {
		t.Fatalf("the call after a probe that panicked: %v; the gate still waits for that probe", err)
	}
	if got := srv.hits.Load(); got != 3 {
		t.Errorf("the upstream saw %d calls, want 3", got)
	}
}

// An answer whose header block is over MaxResponseHeaderBytes is refused as unavailable (not read
// into memory whole and scanned for the key); one just under it is taken.
func TestResponseHeadersBounded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		wantErr error
	}{
		{"under the bound", upstream.MaxResponseHeaderBytes - 4<<10, nil},
		{"over the bound", upstream.MaxResponseHeaderBytes + 1, upstream.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("X-Padding", strings.Repeat("p", tc.size))
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"results":[]}`)
			})
			c, _ := newClient(t, srv.URL, upstream.Config{MaxRetries: -1})
			_, err := c.Do(context.Background(), searchReq(), []byte(testKey))
			if tc.wantErr == nil && err != nil {
				t.Fatalf("Do: %v", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Do: %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// resumer records what Request.Resume was asked, and refuses from attempt refuseAt on (0: never).
type resumer struct {
	mu       sync.Mutex
	asked    []upstream.Wait
	refuseAt int
}

var errTokenDied = errors.New("the caller's token was revoked while the call waited")

func (r *resumer) Resume(_ context.Context, w upstream.Wait) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked = append(r.asked, w)
	if r.refuseAt > 0 && w.Attempt >= r.refuseAt {
		return errTokenDied
	}
	return nil
}

func (r *resumer) Asked() []upstream.Wait {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]upstream.Wait(nil), r.asked...)
}

// Request.Resume is asked before every attempt that followed a wait (a retry's), and only then: a
// call answered at once never asks. An attempt it refuses is not sent, and Do returns its error as
// it is, marked as possibly billed only if an earlier attempt may have been.
func TestResumeAskedAfterEveryWait(t *testing.T) {
	ok := reply(200, `{"results":[]}`)
	failThenOK := func(fail func(int, http.ResponseWriter, *http.Request)) func(int, http.ResponseWriter, *http.Request) {
		return func(n int, w http.ResponseWriter, r *http.Request) {
			if n == 1 {
				fail(n, w, r)
				return
			}
			ok(n, w, r)
		}
	}
	dropConn := func(_ int, w http.ResponseWriter, _ *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close() // read and dropped unanswered: the upstream may have billed it
		}
	}
	for _, tc := range []struct {
		name       string
		handle     func(int, http.ResponseWriter, *http.Request)
		refuseAt   int
		wantAsked  []upstream.Wait
		wantHits   int32
		wantErr    error
		wantBilled bool
	}{
		{"answered at once", ok, 0, nil, 1, nil, false},
		{"retried after a 503", failThenOK(reply(503, `{}`)), 0, []upstream.Wait{{Attempt: 2}}, 2, nil, false},
		{"retried after a 429 without Retry-After", failThenOK(reply(429, `{}`)), 0, []upstream.Wait{{Attempt: 2}}, 2, nil, false},
		{"retry refused after a 503", failThenOK(reply(503, `{}`)), 2, []upstream.Wait{{Attempt: 2}}, 1, errTokenDied, false},
		{"retry refused after a dropped connection", failThenOK(dropConn), 2, []upstream.Wait{{Attempt: 2}}, 1, errTokenDied, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, tc.handle)
			c, _ := newClient(t, srv.URL, upstream.Config{})
			res := &resumer{refuseAt: tc.refuseAt}
			req := searchReq()
			req.Resume = res
			ctx := upstream.WithGate(context.Background(), limiter.NewGate(nil))
			_, err := c.Do(ctx, req, []byte(testKey))
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Do: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil && err.Error() != tc.wantErr.Error() {
				t.Errorf("Do's error reads %q, want Resume's own %q", err, tc.wantErr)
			}
			if got := upstream.MayHaveBilled(err); got != tc.wantBilled {
				t.Errorf("MayHaveBilled = %v, want %v", got, tc.wantBilled)
			}
			if got := res.Asked(); fmt.Sprint(got) != fmt.Sprint(tc.wantAsked) {
				t.Errorf("Resume asked about %v, want %v", got, tc.wantAsked)
			}
			if got := srv.hits.Load(); got != tc.wantHits {
				t.Errorf("the upstream saw %d requests, want %d", got, tc.wantHits)
			}
		})
	}
}

// A first attempt that waited at the credential's gate (another call's 429 closed it) asks
// Request.Resume too. Refused, it is not sent, and it hands the probe's role on: the next caller
// goes at once instead of waiting for a probe that never ends.
func TestResumeAskedAfterTheGatesPause(t *testing.T) {
	srv := newServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			reply(429, `{}`, "Retry-After", "30")(n, w, r)
			return
		}
		reply(200, `{"results":[]}`)(n, w, r)
	})
	c, _ := newClient(t, srv.URL, upstream.Config{MaxRetries: -1, MaxRetryAfter: time.Minute})
	fc := clocktest.New(time.Now())
	ctx := upstream.WithGate(context.Background(), limiter.NewGate(fc))
	if _, err := c.Do(ctx, searchReq(), []byte(testKey)); !errors.Is(err, upstream.ErrRateLimited) {
		t.Fatalf("first call: %v, want ErrRateLimited", err)
	}
	res := &resumer{refuseAt: 1}
	req := searchReq()
	req.Resume = res
	done := make(chan error, 1)
	go func() {
		_, err := c.Do(ctx, req, []byte(testKey))
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); fc.Waiting() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second call never waited at the gate")
		}
	}
	fc.Advance(30 * time.Second)
	if err := <-done; !errors.Is(err, errTokenDied) {
		t.Fatalf("the call refused after the gate's pause: %v, want Resume's error", err)
	}
	if got, want := res.Asked(), []upstream.Wait{{Attempt: 1, Gate: true}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Resume asked about %v, want %v", got, want)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second) // bounds the failure only
	defer cancel()
	if _, err := c.Do(cctx, searchReq(), []byte(testKey)); err != nil {
		t.Fatalf("the call after a refused probe: %v; the gate still waits for that probe", err)
	}
	if got := srv.hits.Load(); got != 2 {
		t.Errorf("the upstream saw %d requests, want 2 (the refused probe sent nothing)", got)
	}
}
