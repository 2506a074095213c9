package httpfront

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

const testKey = "sk_test_0a9b8c7d6e5f4a3b2c1d"

type harness struct {
	b    *broker.Broker
	fake *scaviotest.Server
	now  time.Time
	// unix and tcp reach the same handler over a Unix socket and loopback TCP.
	unix, tcp *http.Client
	tcpURL    string
	sock      string // the Unix socket's path
	logs      *logtest.Buffer
}

// newHarness runs a real broker (real store, fake Scavio) behind the HTTP front on a Unix socket
// and on 127.0.0.1, as brokerd does.
func newHarness(t testing.TB) *harness {
	t.Helper()
	dir := t.TempDir()
	st := storetest.Open(t, dir, store.Options{})
	fake := scaviotest.NewServer(testKey)
	up, err := upstream.New(upstream.Config{BaseURL: fake.URL, BackoffBase: time.Millisecond, MaxRetryAfter: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	now := time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)
	b, err := broker.New(broker.Config{Store: st, Upstream: up, Logger: log, MaxTTL: 24 * time.Hour, Version: "test",
		Now: func() time.Time { return now }, Economics: broker.EconomicsConfig{DefaultCacheTTL: -1}})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(New(b, log), log)
	sock := filepath.Join(dir, "http.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ul)
	go srv.Serve(tl)
	unixClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	tcpClient := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		unixClient.CloseIdleConnections()
		tcpClient.CloseIdleConnections()
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		b.Drain(ctx)
		st.Close()
		fake.Close()
	})
	return &harness{b: b, fake: fake, now: now, unix: unixClient, tcp: tcpClient, tcpURL: "http://" + tl.Addr().String(), logs: logs, sock: sock}
}

func (h *harness) putKey(t testing.TB) {
	t.Helper()
	if _, err := h.b.PutCredential(context.Background(), broker.DefaultCredential, []byte(testKey)); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) mint(t testing.TB, r broker.MintRequest) string {
	t.Helper()
	if r.TTL == 0 {
		r.TTL = time.Hour
	}
	tok, _, err := h.b.MintToken(context.Background(), r, broker.Caller{Known: true, UID: uint32(os.Geteuid())})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// post sends a request exactly as Scavio's docs show it: contract A with x-api-key, contract B
// with Authorization: Bearer and Content-Type: application/json.
func post(t testing.TB, c *http.Client, base, path, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		if path == scaviotest.GooglePath {
			req.Header.Set("Authorization", "Bearer "+key)
		} else {
			req.Header.Set("x-api-key", key)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(testKey)) || strings.Contains(strings.Join(flatten(resp.Header), "\n"), testKey) {
		t.Fatalf("the key is in an answer: %s", b)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

func flatten(h http.Header) []string {
	var out []string
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, k+": "+v)
		}
	}
	return out
}

func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b)
	}
	return m
}

// scavioError checks Scavio's error shape and returns code, message and brokerd's reason.
func scavioError(t *testing.T, a answer) (code, msg, reason string) {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("%d: not Scavio's error shape: %s", a.status, a.body)
	}
	return e.Error.Code, e.Error.Message, e.Error.Reason
}

// Both endpoints, over the Unix socket and loopback TCP, answer with the upstream's own JSON
// body: the same the fake Scavio gives for the same request with the real key.
func TestBothEndpointsAnswerLikeScavio(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, broker.MintRequest{Tools: []string{"web_search", "google_search"}})
	direct := &http.Client{}
	for _, c := range []struct {
		path, body string
	}{
		{scaviotest.SearchPath, `{"query": "MCP server security best practices 2026", "num_results": 5}`},
		{scaviotest.GooglePath, `{"query": "credential brokers", "search_type": "news", "country_code": "us", "language": "en", "page": 1, "light_request": false}`},
	} {
		for _, via := range []struct {
			name   string
			client *http.Client
			base   string
		}{{"unix", h.unix, "http://brokerd"}, {"tcp", h.tcp, h.tcpURL}} {
			t.Run(c.path+" "+via.name, func(t *testing.T) {
				got := post(t, via.client, via.base, c.path, tok, c.body)
				if got.status != http.StatusOK || got.header.Get("Content-Type") != "application/json" {
					t.Fatalf("%d %s", got.status, got.body)
				}
				before := h.fake.Count()
				want := post(t, direct, h.fake.URL, c.path, testKey, c.body)
				if h.fake.Count() != before+1 || want.status != http.StatusOK {
					t.Fatalf("direct call: %d %s", want.status, want.body)
				}
				if g, w := decodeJSON(t, got.body), decodeJSON(t, want.body); !reflect.DeepEqual(g, w) {
					t.Fatalf("brokerd answered\n%s\nScavio answers\n%s", got.body, want.body)
				}
			})
		}
	}
	// The upstream saw brokerd's key, in the style each path requires.
	for _, r := range h.fake.Requests() {
		if !r.KeyOK {
			t.Fatalf("upstream request %s with auth %q was not keyed right", r.Path, r.Auth)
		}
	}
	// Audited as searches, and counted by Usage like gRPC ones.
	recs, err := h.b.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if (r.Method == broker.HTTPSearchMethod || r.Method == broker.HTTPGoogleMethod) && r.Code == "OK" && r.TokenID != "" && r.QueryMAC != "" && r.Credits > 0 {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d audited HTTP searches, want 4: %+v", n, recs)
	}
	rows, _, err := h.b.Usage("credential", time.Time{})
	if err != nil || len(rows) != 1 || rows[0].Calls != 4 {
		t.Fatalf("usage: %+v %v, want 4 calls on the credential", rows, err)
	}
}

// A raw upstream key in place of a token is refused with 401 before any upstream call, on both
// endpoints, and audited as such.
func TestRawKeyRefusedBeforeUpstream(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	for _, path := range []string{scaviotest.SearchPath, scaviotest.GooglePath} {
		before := h.fake.Count()
		a := post(t, h.unix, "http://brokerd", path, testKey, `{"query": "q"}`)
		if a.status != http.StatusUnauthorized {
			t.Fatalf("%s: %d %s", path, a.status, a.body)
		}
		if code, _, reason := scavioError(t, a); code != "unauthorized" || reason != broker.ReasonRawKeyPresented {
			t.Fatalf("%s: code %q reason %q", path, code, reason)
		}
		if h.fake.Count() != before {
			t.Fatalf("%s: a raw key reached the upstream", path)
		}
	}
	recs, _ := h.b.ListAudit(0, time.Time{}, 100)
	n := 0
	for _, r := range recs {
		if r.Event == broker.RefusedRawKey && r.Credential == broker.DefaultCredential && r.Code == "Unauthenticated" && r.PeerKnown {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d raw-key audit records, want 2: %+v", n, recs)
	}
}

// Refusals: Scavio's error shape and status, brokerd's reason, Retry-After where waiting helps.
func TestRefusals(t *testing.T) {
	other := uint32(os.Geteuid()) + 1
	for _, c := range []struct {
		name   string
		setup  func(t *testing.T, h *harness) (client *http.Client, base, path, token, body string)
		status int
		code   string
		reason string
		retry  string
	}{
		{name: "no token", status: 401, code: "unauthorized", reason: broker.ReasonTokenMissing,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, "", `{"query":"q"}`
			}},
		{name: "not a token", status: 401, code: "unauthorized", reason: broker.ReasonTokenInvalid,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, "sk_live_wrong", `{"query":"q"}`
			}},
		{name: "scope", status: 403, code: "forbidden", reason: broker.ReasonToolNotInScope,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.GooglePath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "bad input", status: 400, code: "bad_request", reason: broker.ReasonInvalidArgument,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":""}`
			}},
		{name: "not JSON", status: 400, code: "bad_request", reason: broker.ReasonInvalidArgument,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":`
			}},
		{name: "unknown field", status: 400, code: "bad_request", reason: broker.ReasonInvalidArgument,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q","api_key":"x"}`
			}},
		{name: "oversized body", status: 413, code: "request_too_large", reason: broker.ReasonRequestTooLarge,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}),
					`{"query":"` + strings.Repeat("a", MaxBodyBytes) + `"}`
			}},
		{name: "token rate limit", status: 429, code: "rate_limit_exceeded", reason: broker.ReasonRateLimited, retry: "60",
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				tok := h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, RateLimit: 1, RatePeriod: time.Minute})
				if a := post(t, h.unix, "http://b", scaviotest.SearchPath, tok, `{"query":"q"}`); a.status != 200 {
					t.Fatalf("first call: %d %s", a.status, a.body)
				}
				return h.unix, "http://b", scaviotest.SearchPath, tok, `{"query":"q"}`
			}},
		{name: "upstream out of credits", status: 402, code: "insufficient_credits", reason: broker.ReasonUpstreamOutOfCredits,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 402})
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "upstream rate limit", status: 429, code: "rate_limit_exceeded", reason: broker.ReasonUpstreamRateLimited, retry: "30",
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 429, RetryAfter: "30"})
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "upstream rejects the key", status: 502, code: "bad_gateway", reason: broker.ReasonUpstreamRejectedKey,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 401, EchoKey: true})
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "upstream down", status: 502, code: "bad_gateway", reason: broker.ReasonUpstreamUnavailable,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				h.fake.SetFault(scaviotest.Fault{Status: 503})
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "credential missing", status: 503, code: "service_unavailable", reason: broker.ReasonCredentialMissing,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}}), `{"query":"q"}`
			}},
		{name: "token bound to another uid over TCP", status: 401, code: "unauthorized", reason: broker.ReasonTokenBoundToOtherUID,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				return h.tcp, h.tcpURL, scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, BindUID: &other}), `{"query":"q"}`
			}},
		{name: "token bound to another uid", status: 401, code: "unauthorized", reason: broker.ReasonTokenBoundToOtherUID,
			setup: func(t *testing.T, h *harness) (*http.Client, string, string, string, string) {
				h.putKey(t)
				return h.unix, "http://b", scaviotest.SearchPath, h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, BindUID: &other}), `{"query":"q"}`
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			client, base, path, tok, body := c.setup(t, h)
			a := post(t, client, base, path, tok, body)
			if a.status != c.status {
				t.Fatalf("status %d, want %d: %s", a.status, c.status, a.body)
			}
			var e errorBody
			if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Message == "" {
				t.Fatalf("not Scavio's error shape: %s", a.body)
			}
			if e.Error.Code != c.code || e.Error.Reason != c.reason || a.header.Get("X-Credbroker-Reason") != c.reason {
				t.Fatalf("code %q reason %q, want %q %q: %s", e.Error.Code, e.Error.Reason, c.code, c.reason, a.body)
			}
			if got := a.header.Get("Retry-After"); got != c.retry {
				t.Fatalf("Retry-After %q, want %q", got, c.retry)
			}
		})
	}
}

// A uid-bound token of the caller's own uid works over the Unix socket (SO_PEERCRED) and over
// loopback TCP (the kernel's socket table), and each call is audited with that uid.
func TestBoundTokenOwnUID(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	self := uint32(os.Geteuid())
	tok := h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, BindUID: &self})
	for _, via := range []struct {
		c    *http.Client
		base string
	}{{h.unix, "http://b"}, {h.tcp, h.tcpURL}} {
		if a := post(t, via.c, via.base, scaviotest.SearchPath, tok, `{"query":"q"}`); a.status != 200 {
			t.Fatalf("%s: %d %s", via.base, a.status, a.body)
		}
	}
	recs, _ := h.b.ListAudit(0, time.Time{}, 100)
	n := 0
	for _, r := range recs {
		if r.Method == broker.HTTPSearchMethod && r.Code == "OK" && r.PeerKnown && r.UID == self {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d searches audited with uid %d, want 2: %+v", n, self, recs)
	}
}

// X-RateLimit-* reflect brokerd's limiter for the token, not the upstream's.
func TestRateLimitHeaders(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	tok := h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, RateLimit: 3, RatePeriod: time.Minute})
	for i, want := range []string{"2", "1", "0"} {
		a := post(t, h.unix, "http://b", scaviotest.SearchPath, tok, `{"query":"q`+strconv.Itoa(i)+`"}`)
		if a.status != 200 || a.header.Get("X-RateLimit-Limit") != "3" || a.header.Get("X-RateLimit-Remaining") != want {
			t.Fatalf("call %d: %d limit %q remaining %q, want 3 %s", i, a.status, a.header.Get("X-RateLimit-Limit"), a.header.Get("X-RateLimit-Remaining"), want)
		}
		// The clock stands still: full again after one period per spent call's share.
		reset := h.now.Add(time.Duration(i+1) * 20 * time.Second).Unix()
		if got := a.header.Get("X-RateLimit-Reset"); got != strconv.FormatInt(reset, 10) {
			t.Fatalf("call %d: reset %s, want %d", i, got, reset)
		}
	}
	a := post(t, h.unix, "http://b", scaviotest.SearchPath, tok, `{"query":"q"}`)
	if a.status != 429 || a.header.Get("X-RateLimit-Remaining") != "0" || a.header.Get("Retry-After") != "20" {
		t.Fatalf("fourth call: %d remaining %q retry %q", a.status, a.header.Get("X-RateLimit-Remaining"), a.header.Get("Retry-After"))
	}
}

// A token's X-RateLimit-* headers go to its holder only. Token ids are public (logs, audit records,
// error metadata), and a token with a known id, any secret and a right checksum passes the format
// check: such a request is refused 401 and must learn nothing of that token's limiter (its limit,
// the calls left, when it refills: how busy its holder is), from loopback TCP, which any local user
// reaches.
func TestRateLimitHeadersOnlyForTheHolder(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	victim := h.mint(t, broker.MintRequest{Tools: []string{"web_search"}, RateLimit: 3, RatePeriod: time.Minute})
	if a := post(t, h.unix, "http://b", scaviotest.SearchPath, victim, `{"query":"q"}`); a.status != 200 || a.header.Get("X-RateLimit-Remaining") != "2" {
		t.Fatalf("the holder's call: %d remaining %q", a.status, a.header.Get("X-RateLimit-Remaining"))
	}
	// The victim's id with another secret, the checksum recomputed.
	body := victim[:len(victim)-8]
	body = body[:len(body)-64] + strings.Repeat("0", 64)
	forged := body + fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(body)))
	for _, path := range []string{scaviotest.SearchPath, scaviotest.GooglePath} {
		a := post(t, h.tcp, h.tcpURL, path, forged, `{"query":"q"}`)
		if a.status != http.StatusUnauthorized {
			t.Fatalf("%s with a forged token: %d %s", path, a.status, a.body)
		}
		for _, name := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
			if v := a.header.Get(name); v != "" {
				t.Errorf("%s with a forged token: %s: %s, the victim token's", path, name, v)
			}
		}
	}
}

// Bad HTTP gets a clear 4xx: wrong path, wrong method, oversized headers.
func TestBadHTTP(t *testing.T) {
	h := newHarness(t)
	a := post(t, h.unix, "http://b", "/api/v1/nope", "", `{}`)
	if a.status != 404 {
		t.Fatalf("unknown path: %d", a.status)
	}
	resp, err := h.unix.Get("http://b" + scaviotest.SearchPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://b"+scaviotest.SearchPath, strings.NewReader(`{"query":"q"}`))
	req.Header.Set("x-api-key", strings.Repeat("k", 2*MaxHeaderBytes))
	resp, err = h.unix.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized header: %d", resp.StatusCode)
	}
	if h.fake.Count() != 0 {
		t.Fatal("bad HTTP reached the upstream")
	}
}

// An upstream that echoes the key into its results: the answer carries [REDACTED] in its place
// (post fails the test if the key is anywhere in an answer).
func TestAnswerIsRedacted(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	h.fake.SetFault(scaviotest.Fault{EchoKeyInResults: true})
	tok := h.mint(t, broker.MintRequest{Tools: []string{"web_search", "google_search"}})
	for _, path := range []string{scaviotest.SearchPath, scaviotest.GooglePath} {
		a := post(t, h.tcp, h.tcpURL, path, tok, `{"query":"echo"}`)
		if a.status != 200 || !bytes.Contains(a.body, []byte("[REDACTED]")) {
			t.Fatalf("%s: %d %s", path, a.status, a.body)
		}
	}
}

// Bytes that are not HTTP get net/http's 400 and a closed connection; the server goes on.
func TestGarbageIsRefused(t *testing.T) {
	h := newHarness(t)
	c, err := net.Dial("tcp", strings.TrimPrefix(h.tcpURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("\x00\x01GARBAGE\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	line, _ := io.ReadAll(io.LimitReader(c, 64))
	if !strings.HasPrefix(string(line), "HTTP/1.1 400") {
		t.Fatalf("answer %q", line)
	}
	if a := post(t, h.tcp, h.tcpURL, scaviotest.SearchPath, "", `{"query":"q"}`); a.status != 401 {
		t.Fatalf("after garbage: %d", a.status)
	}
}
