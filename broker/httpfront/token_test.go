package httpfront

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
)

// A program with no secret gets a token over the Unix-socket HTTP front by attestation (this test
// process matches the registration by uid and executable), and uses it as its Scavio "API key".
func TestTokenByAttestation(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	w := store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{uint32(os.Geteuid())}, Exe: self}
	if _, err := h.b.AddWorkload(context.Background(), w, false, broker.Caller{Known: true}); err != nil {
		t.Fatal(err)
	}

	a := post(t, h.unix, "http://brokerd", TokenPath, "", "")
	if a.status != http.StatusOK {
		t.Fatalf("attestation refused: %d %s", a.status, a.body)
	}
	if got := a.header.Get("Cache-Control"); got != "no-store" {
		t.Fatalf("Cache-Control %q, want no-store", got)
	}
	var tok tokenAnswer
	if err := json.Unmarshal(a.body, &tok); err != nil {
		t.Fatalf("answer: %v: %s", err, a.body)
	}
	if tok.Token == "" || tok.ID == "" || tok.Workload != "mcp" || strings.Join(tok.Tools, ",") != "web_search" || !tok.ExpiresAt.After(h.now) {
		t.Fatalf("answer %+v", tok)
	}
	if s := post(t, h.unix, "http://brokerd", scaviotest.SearchPath, tok.Token, `{"query": "q"}`); s.status != http.StatusOK {
		t.Fatalf("search with the fetched token: %d %s", s.status, s.body)
	}

	recs, err := h.b.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Method == broker.HTTPTokenMethod && r.Code == "OK" && r.Workload == "mcp" && r.TokenID == tok.ID && r.PeerKnown {
			found = true
		}
		if strings.Contains(r.Method+r.Event, tok.Token) {
			t.Fatalf("the token is in an audit record: %+v", r)
		}
	}
	if !found {
		t.Fatalf("no OK %s record for token %s: %+v", broker.HTTPTokenMethod, tok.ID, recs)
	}
}

func TestTokenRefusals(t *testing.T) {
	h := newHarness(t)
	h.putKey(t)
	w := store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{uint32(os.Geteuid())}}
	if _, err := h.b.AddWorkload(context.Background(), w, false, broker.Caller{Known: true}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		tcp        bool
		method     string
		body       string
		status     int
		reason     string
		msgContain string
	}{
		{"loopback TCP has no process to attest", true, http.MethodPost, "", http.StatusForbidden, broker.ReasonPermissionDenied, "Unix-socket peer"},
		{"tool outside the registration", false, http.MethodPost, `{"tools": ["google_search"]}`, http.StatusForbidden, broker.ReasonPermissionDenied, "google_search"},
		{"unknown field", false, http.MethodPost, `{"tool": "web_search"}`, http.StatusBadRequest, broker.ReasonInvalidArgument, `unknown field "tool"`},
		{"not JSON", false, http.MethodPost, `tools=web_search`, http.StatusBadRequest, broker.ReasonInvalidArgument, "invalid JSON"},
		{"two values", false, http.MethodPost, `{} {}`, http.StatusBadRequest, broker.ReasonInvalidArgument, "more than one JSON value"},
		{"too large", false, http.MethodPost, `{"tools": ["` + strings.Repeat("a", MaxBodyBytes) + `"]}`, http.StatusRequestEntityTooLarge, broker.ReasonRequestTooLarge, "over"},
		{"GET", false, http.MethodGet, "", http.StatusMethodNotAllowed, "", "takes POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, base := h.unix, "http://brokerd"
			if tc.tcp {
				c, base = h.tcp, h.tcpURL
			}
			req, err := http.NewRequest(tc.method, base+TokenPath, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e errorBody
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("%d: not Scavio's error shape: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tc.status || e.Error.Reason != tc.reason || !strings.Contains(e.Error.Message, tc.msgContain) {
				t.Fatalf("got %d %+v, want %d reason %q message with %q", resp.StatusCode, e.Error, tc.status, tc.reason, tc.msgContain)
			}
			if resp.Header.Get("X-Credbroker-Reason") != tc.reason {
				t.Fatalf("X-Credbroker-Reason %q", resp.Header.Get("X-Credbroker-Reason"))
			}
		})
	}
	recs, err := h.b.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Method == broker.HTTPTokenMethod && r.Code == "OK" {
			t.Fatalf("a refused attestation was recorded as OK: %+v", r)
		}
	}
}

// The fetched token is bound to the process that fetched it: here curl, which exits at once, so
// its token is revoked (the README's warning against fetching for someone else).
func TestTokenDiesWithTheFetchingProcess(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	h := newHarness(t)
	h.putKey(t)
	w := store.Workload{Name: "curl", Tools: []string{"web_search"}, UIDs: []uint32{uint32(os.Geteuid())}, Exe: curl}
	if _, err := h.b.AddWorkload(context.Background(), w, false, broker.Caller{Known: true}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(curl, "-sS", "--fail-with-body", "--unix-socket", h.sock, "-X", "POST", "http://brokerd"+TokenPath).Output()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	var tok tokenAnswer
	if err := json.Unmarshal(out, &tok); err != nil || tok.ID == "" || tok.Workload != "curl" {
		t.Fatalf("answer %v: %s", err, out)
	}
	exited := time.Now()
	for {
		d, err := h.b.GetToken(context.Background(), tok.ID)
		if err != nil {
			t.Fatal(err)
		}
		if d.Revoked {
			break
		}
		if time.Since(exited) > 10*time.Second {
			t.Fatal("token still live 10s after curl exited")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a := post(t, h.unix, "http://brokerd", scaviotest.SearchPath, tok.Token, `{"query": "q"}`); a.status != http.StatusUnauthorized {
		t.Fatalf("search with the dead process's token: %d %s", a.status, a.body)
	}
}

// FetchToken over HTTP is rate limited per uid like the gRPC one (it needs no token), and its
// refusals are coalesced: 429 with Retry-After, one audit record for the lot.
func TestTokenFetchRateIsCoalesced(t *testing.T) {
	h := newHarness(t)
	t.Cleanup(h.b.StopWatching) // the fetched tokens are bound to this test process
	w := store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{uint32(os.Geteuid())}}
	if _, err := h.b.AddWorkload(context.Background(), w, false, broker.Caller{Known: true}); err != nil {
		t.Fatal(err)
	}
	for i := range broker.FetchBurstPerUID {
		if a := post(t, h.unix, "http://brokerd", TokenPath, "", ""); a.status != http.StatusOK {
			t.Fatalf("fetch %d of the burst: %d %s", i+1, a.status, a.body)
		}
	}
	before, err := h.b.ListAudit(0, time.Time{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	const over = 20
	for range over {
		a := post(t, h.unix, "http://brokerd", TokenPath, "", "")
		if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || a.header.Get("X-Credbroker-Reason") != broker.ReasonRateLimited {
			t.Fatalf("fetch past the burst: %d %v %s", a.status, a.header, a.body)
		}
	}
	if err := h.b.FlushRefusals(context.Background()); err != nil {
		t.Fatal(err)
	}
	after, err := h.b.ListAudit(0, time.Time{}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var sum uint64
	for _, r := range after[len(before):] {
		if r.Event == broker.RefusedFetchRate && r.Method == broker.HTTPTokenMethod {
			n++
			sum += r.Count
		}
	}
	if len(after)-len(before) > 2 || n == 0 || sum != over {
		t.Fatalf("%d refused fetches: %d new records, %d %s counting %d; want at most 2 counting %d", over, len(after)-len(before), n, broker.RefusedFetchRate, sum, over)
	}
}
