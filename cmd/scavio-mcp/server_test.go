package main

// In-process tests: the SDK's client over the SDK's in-memory transport, against the server wired
// to a real brokerd and the fake upstream.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestToolsListFollowsTokenScope(t *testing.T) {
	tb := startBroker(t, true)
	for _, tc := range []struct {
		name  string
		token func(t *testing.T) string
		want  []string
	}{
		{"web_search only", func(t *testing.T) string { tok, _ := tb.mint(t, time.Hour, webSearch); return tok }, []string{webSearch}},
		{"google_search only", func(t *testing.T) string { tok, _ := tb.mint(t, time.Hour, googleSearch); return tok }, []string{googleSearch}},
		{"both", func(t *testing.T) string { tok, _ := tb.mint(t, time.Hour, googleSearch, webSearch); return tok }, []string{webSearch, googleSearch}},
		// Without a confirmed token every tool is listed, so that calling one explains the problem.
		{"no token", func(*testing.T) string { return "" }, []string{webSearch, googleSearch}},
		{"invalid token", func(*testing.T) string { return "cbt_not_a_real_token" }, []string{webSearch, googleSearch}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := start(t, tb.socket, tc.token(t)).toolNames(t)
			if !slices.Equal(got, slices.Sorted(slices.Values(tc.want))) {
				t.Errorf("tools/list = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestToolSchemas(t *testing.T) {
	s := serve(t, &backend{unusable: "x", tools: toolNames()}, &logtest.Buffer{})
	res, err := s.ListTools(testContext(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	tools := map[string]*mcp.Tool{}
	for _, tool := range res.Tools {
		tools[tool.Name] = tool
	}
	prop := func(tool, name string) map[string]any {
		t.Helper()
		props := tools[tool].InputSchema.(map[string]any)["properties"].(map[string]any)
		p, ok := props[name].(map[string]any)
		if !ok {
			t.Fatalf("%s has no property %q: %v", tool, name, props)
		}
		if d, _ := p["description"].(string); d == "" {
			t.Errorf("%s.%s has no description", tool, name)
		}
		return p
	}
	check := func(what string, got, want any) {
		t.Helper()
		if !equalJSON(got, want) {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	for _, name := range toolNames() {
		tool := tools[name]
		if tool == nil {
			t.Fatalf("tool %s not listed", name)
		}
		if tool.Description == "" || tool.Annotations == nil || !tool.Annotations.ReadOnlyHint {
			t.Errorf("%s: description %q, annotations %+v", name, tool.Description, tool.Annotations)
		}
		in := tool.InputSchema.(map[string]any)
		check(name+" required", in["required"], []any{"query"})
		check(name+" additionalProperties", in["additionalProperties"], false)
		q := prop(name, "query")
		check(name+" query minLength", q["minLength"], 1)
		check(name+" query maxLength", q["maxLength"], 500)
		out := tool.OutputSchema.(map[string]any)
		items := out["properties"].(map[string]any)["results"].(map[string]any)["items"].(map[string]any)
		check(name+" result fields", items["required"], []any{"title", "url", "snippet", "position"})
	}
	n := prop(webSearch, "num_results")
	check("num_results minimum", n["minimum"], 1)
	check("num_results maximum", n["maximum"], 100)
	check("num_results default", n["default"], 5)
	check("search_type enum", prop(googleSearch, "search_type")["enum"], []any{"classic", "news", "maps", "images", "lens"})
	check("device enum", prop(googleSearch, "device")["enum"], []any{"desktop", "mobile"})
	check("page minimum", prop(googleSearch, "page")["minimum"], 1)
	check("page maximum", prop(googleSearch, "page")["maximum"], 100)
	check("country_code pattern", prop(googleSearch, "country_code")["pattern"], "^[A-Za-z]{2}$")
	prop(googleSearch, "language")
}

func TestWebSearch(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	s := start(t, tb.socket, tok)

	res := s.call(t, webSearch, map[string]any{"query": "golang generics", "num_results": 3})
	if res.IsError {
		t.Fatalf("tool error: %s", text(res))
	}
	out := structured(t, res)
	if len(out.Results) != 3 {
		t.Fatalf("structured results = %+v, want 3", out.Results)
	}
	for i, r := range out.Results {
		if r.Title == "" || !strings.HasPrefix(r.URL, "http") || r.Snippet == "" || r.Position != i+1 {
			t.Errorf("result %d = %+v", i, r)
		}
	}
	// The text is the numbered list of the same results.
	if got, want := text(res), formatResults("golang generics", out.Results); got != want {
		t.Errorf("text =\n%s\nwant\n%s", got, want)
	}
	if !strings.HasPrefix(text(res), "1. "+out.Results[0].Title+"\n   "+out.Results[0].URL+"\n") {
		t.Errorf("text does not start with the first result:\n%s", text(res))
	}
	reqs := tb.fake.Requests()
	if len(reqs) != 1 || reqs[0].Path != scaviotest.SearchPath || reqs[0].Body["query"] != "golang generics" || reqs[0].Body["num_results"] != 3.0 {
		t.Errorf("upstream saw %+v", reqs)
	}

	// num_results defaults to 5.
	res = s.call(t, webSearch, map[string]any{"query": "rust"})
	if res.IsError || len(structured(t, res).Results) != 5 {
		t.Errorf("default num_results: isError %v, %d results: %s", res.IsError, len(structured(t, res).Results), text(res))
	}
}

func TestGoogleSearch(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, googleSearch)
	s := start(t, tb.socket, tok)

	res := s.call(t, googleSearch, map[string]any{
		"query": "espresso machines", "search_type": "news", "country_code": "US", "language": "en", "page": 2, "device": "desktop",
	})
	if res.IsError {
		t.Fatalf("tool error: %s", text(res))
	}
	out := structured(t, res)
	if len(out.Results) == 0 {
		t.Fatal("no results")
	}
	if out.Results[0].Title == "" || out.Results[0].URL == "" || out.Results[0].Position < 1 {
		t.Errorf("first result = %+v", out.Results[0])
	}
	if got, want := text(res), formatResults("espresso machines", out.Results); got != want {
		t.Errorf("text =\n%s\nwant\n%s", got, want)
	}
	reqs := tb.fake.Requests()
	if len(reqs) != 1 || reqs[0].Path != scaviotest.GooglePath {
		t.Fatalf("upstream saw %+v", reqs)
	}
	for k, want := range map[string]any{"query": "espresso machines", "search_type": "news", "country_code": "us", "language": "en", "page": 2.0, "device": "desktop"} {
		if got := reqs[0].Body[k]; got != want {
			t.Errorf("upstream body %s = %v, want %v", k, got, want)
		}
	}

	// Only the query is required.
	if res := s.call(t, googleSearch, map[string]any{"query": "espresso"}); res.IsError || len(structured(t, res).Results) == 0 {
		t.Errorf("query only: %s", text(res))
	}
}

func TestBadArguments(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch, googleSearch)
	s := start(t, tb.socket, tok)

	for _, tc := range []struct {
		name string
		tool string
		args map[string]any
		want string
	}{
		{"empty query", webSearch, map[string]any{"query": ""}, "query"},
		{"missing query", webSearch, map[string]any{"num_results": 3}, "query"},
		{"blank query", webSearch, map[string]any{"query": "   "}, "query must not be empty"},
		{"query too long", webSearch, map[string]any{"query": strings.Repeat("a", 501)}, "query"},
		{"num_results 500", webSearch, map[string]any{"query": "x", "num_results": 500}, "num_results"},
		{"num_results 0", webSearch, map[string]any{"query": "x", "num_results": 0}, "num_results"},
		{"num_results not a number", webSearch, map[string]any{"query": "x", "num_results": "ten"}, "num_results"},
		{"unknown argument", webSearch, map[string]any{"query": "x", "page": 2}, "page"},
		{"google empty query", googleSearch, map[string]any{"query": ""}, "query"},
		{"unknown search_type", googleSearch, map[string]any{"query": "x", "search_type": "videos"}, "search_type"},
		{"unknown device", googleSearch, map[string]any{"query": "x", "device": "tablet"}, "device"},
		{"page 0", googleSearch, map[string]any{"query": "x", "page": 0}, "page"},
		{"page 101", googleSearch, map[string]any{"query": "x", "page": 101}, "page"},
		{"country_code too long", googleSearch, map[string]any{"query": "x", "country_code": "usa"}, "country_code"},
		{"news on mobile", googleSearch, map[string]any{"query": "x", "search_type": "news", "device": "mobile"}, "news search supports only device desktop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tb.fake.Count()
			wantToolError(t, s.call(t, tc.tool, tc.args), tc.want)
			if n := tb.fake.Count() - before; n != 0 {
				t.Errorf("bad arguments reached the upstream %d times", n)
			}
		})
	}
}

func TestRefusedTokenAsksForANewOne(t *testing.T) {
	tb := startBroker(t, true)

	t.Run("expired", func(t *testing.T) {
		// 3s: room to list the tools while the token is valid, even on a loaded machine.
		tok, waitExpired := tb.mintAndWaitExpiry(t, 3*time.Second, webSearch)
		s := start(t, tb.socket, tok)
		if got := s.toolNames(t); !slices.Equal(got, []string{webSearch}) {
			t.Fatalf("tools/list = %v", got)
		}
		waitExpired()
		wantToolError(t, s.call(t, webSearch, map[string]any{"query": "x"}), "expired", "mint a new token")
	})
	t.Run("revoked", func(t *testing.T) {
		tok, id := tb.mint(t, time.Hour, webSearch)
		s := start(t, tb.socket, tok)
		if res := s.call(t, webSearch, map[string]any{"query": "x"}); res.IsError {
			t.Fatalf("before revoke: %s", text(res))
		}
		if _, err := tb.admin.RevokeToken(testContext(t), id); err != nil {
			t.Fatal(err)
		}
		wantToolError(t, s.call(t, webSearch, map[string]any{"query": "x"}), "revoked", "mint a new token", "[reason: TOKEN_REVOKED]")
	})
	t.Run("expired before start", func(t *testing.T) {
		tok, waitExpired := tb.mintAndWaitExpiry(t, time.Second, webSearch, googleSearch)
		waitExpired()
		s := start(t, tb.socket, tok)
		for _, tool := range s.toolNames(t) {
			wantToolError(t, s.call(t, tool, map[string]any{"query": "x"}), "expired", "mint a new token", "[reason: TOKEN_EXPIRED]")
		}
	})
	t.Run("unknown", func(t *testing.T) {
		s := start(t, tb.socket, "cbt_not_a_real_token")
		wantToolError(t, s.call(t, googleSearch, map[string]any{"query": "x"}), "invalid token", "mint a new token")
	})
	if n := tb.fake.Count(); n != 1 {
		t.Errorf("upstream saw %d requests, want only the one before revocation", n)
	}
}

func TestUpstreamFaults(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	s := start(t, tb.socket, tok)

	for _, tc := range []struct {
		name  string
		fault scaviotest.Fault
		want  []string
	}{
		{"key rejected", scaviotest.Fault{Status: 401, EchoKey: true}, []string{"upstream rejected the credential", "brokerctl rotate scavio_api_key", "operator", "[reason: UPSTREAM_REJECTED_KEY]"}},
		{"key forbidden", scaviotest.Fault{Status: 403}, []string{"brokerctl rotate scavio_api_key", "Retrying will not help"}},
		{"out of credits", scaviotest.Fault{Status: 402}, []string{"out of credits", "operator", "Retrying will not help", "[reason: UPSTREAM_OUT_OF_CREDITS]"}},
		{"upstream down", scaviotest.Fault{Status: 503}, []string{"unavailable", "Try again later"}},
		// Last: a 429 pauses every caller of the key for its Retry-After (brokerd's half-open gate).
		{"rate limited", scaviotest.Fault{Status: 429, RetryAfter: "120"}, []string{"retry after 2m0s", "wait", "Retry after 2m0s.", "[reason: UPSTREAM_RATE_LIMITED]"}},
	} {
		if tc.fault.Status == 429 {
			// The server is still fine after the other faults.
			if res := s.call(t, webSearch, map[string]any{"query": "still fine"}); res.IsError {
				t.Fatalf("after faults: %s", text(res))
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			tb.fake.SetFault(tc.fault)
			t.Cleanup(func() { tb.fake.SetFault(scaviotest.Fault{}) })
			// A query of its own: an earlier answer from the result cache would hide the fault.
			wantToolError(t, s.call(t, webSearch, map[string]any{"query": tc.name}), tc.want...)
		})
	}
	// Every caller of the key now waits out the 429's two minutes, and is told so at once.
	tb.fake.SetFault(scaviotest.Fault{})
	before := tb.fake.Count()
	wantToolError(t, s.call(t, webSearch, map[string]any{"query": "after the 429"}), "retry after 2m0s")
	if n := tb.fake.Count() - before; n != 0 {
		t.Errorf("a call during the upstream's wait reached it %d times", n)
	}
}

func TestCredentialNotConfigured(t *testing.T) {
	tb := startBroker(t, false)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	s := start(t, tb.socket, tok)
	wantToolError(t, s.call(t, webSearch, map[string]any{"query": "x"}), "brokerctl credential put scavio_api_key", "operator")
}

func TestPermissionDenied(t *testing.T) {
	// Reachable when WhoAmI could not be answered at start: every tool is listed.
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	log := &logtest.Buffer{}
	b := connectBackend(t, tb.socket, tok, log)
	b.tools = toolNames()
	s := serve(t, b, log)
	wantToolError(t, s.call(t, googleSearch, map[string]any{"query": "x"}), "not scoped for google_search", "--tools google_search")
}

func TestNoToken(t *testing.T) {
	tb := startBroker(t, true)
	s := start(t, tb.socket, "")
	for _, tool := range []string{webSearch, googleSearch} {
		res := s.call(t, tool, map[string]any{"query": "x"})
		wantToolError(t, res)
		// No token and no registration: attestation is refused, and the text says how to register.
		if !strings.Contains(text(res), "none are registered") || !strings.Contains(text(res), "brokerctl workload add") {
			t.Errorf("%s: text = %q", tool, text(res))
		}
	}
	if n := tb.fake.Count(); n != 0 {
		t.Errorf("upstream saw %d requests", n)
	}
}

func TestBrokerUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	s := start(t, sock, "cbt_some_token")
	if got := s.toolNames(t); !slices.Equal(got, slices.Sorted(slices.Values(toolNames()))) {
		t.Errorf("tools/list = %v, want every tool", got)
	}
	wantToolError(t, s.call(t, webSearch, map[string]any{"query": "x"}), "cannot reach brokerd at "+sock, "Try again later")
	if !strings.Contains(s.log.String(), "did not confirm the token") {
		t.Errorf("log does not report the failed start-up check:\n%s", s.log)
	}
}

func TestCancelReachesBroker(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	s := start(t, tb.socket, tok)
	arrived, hold := make(chan struct{}), make(chan struct{})
	// Runs before startBroker's cleanups: the held request is answered and brokerd stops at once.
	t.Cleanup(func() { close(hold) })
	tb.fake.SetFault(scaviotest.Fault{Arrived: arrived, Hold: hold, Times: 1})

	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	go func() {
		_, err := s.CallTool(ctx, &mcp.CallToolParams{Name: webSearch, Arguments: map[string]any{"query": "slow"}})
		errc <- err
	}()
	<-arrived // the upstream has the request
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("CallTool = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CallTool did not return after cancel")
	}
	// brokerd ended the call as Canceled while the upstream still held the request. The request
	// itself goes on: it may be billed, so brokerd settles its credits when it ends (README,
	// "Upstream economics").
	waitFor(t, "brokerd to record the search as canceled", func() bool {
		recs, err := tb.admin.ListAudit(testContext(t), &credbrokerv1.ListAuditRequest{})
		return err == nil && slices.ContainsFunc(recs, func(r *credbrokerv1.AuditRecord) bool {
			return r.GetMethod() == credbrokerv1.SearchService_Search_FullMethodName && r.GetCode() == "Canceled"
		})
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestToolErrorText(t *testing.T) {
	// Every code brokerd or the client can produce gets advice; the server's message is kept.
	for _, tc := range []struct {
		code codes.Code
		want string
	}{
		{codes.Unauthenticated, "mint a new token"},
		{codes.PermissionDenied, "not scoped for web_search"},
		{codes.InvalidArgument, "Correct the arguments"},
		{codes.OutOfRange, "Correct the arguments"}, // e.g. an answer too large for the results asked
		{codes.FailedPrecondition, "operator"},
		{codes.ResourceExhausted, "wait"},
		{codes.Unavailable, "Try again later"},
		{codes.DeadlineExceeded, "timed out"},
		{codes.Canceled, "cancelled"},
		{codes.Unimplemented, "upgrade"},
		{codes.Internal, "brokerd's log"},
		{codes.DataLoss, "brokerd's log"},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			got := toolErrorText(webSearch, &client.Error{Code: tc.code, Message: "server says hi"})
			if !strings.Contains(got, tc.want) || !strings.Contains(got, "server says hi") {
				t.Errorf("text = %q, want %q and the server message", got, tc.want)
			}
		})
	}
	// A socket served by an untrusted uid is not brokerd refusing the token or its scope.
	got := toolErrorText(webSearch, fmt.Errorf("the socket S is served by uid 65534: %w", client.ErrUntrustedServer))
	if !strings.Contains(got, "nothing was sent") || !strings.Contains(got, "CREDBROKER_SERVER_UID") || strings.Contains(got, "not scoped") {
		t.Errorf("untrusted server: %q", got)
	}
}

func TestFormatResults(t *testing.T) {
	got := formatResults("q", []result{
		{Title: "First\nresult", URL: "https://a.example", Snippet: "  spread\tover\n lines ", Position: 1},
		{Title: "", URL: "https://b.example", Position: 0},
		{Title: "Third", Snippet: "no url", Position: 7},
	})
	want := "1. First result\n   https://a.example\n   spread over lines\n" +
		"2. (untitled)\n   https://b.example\n" +
		"7. Third\n   no url"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if got := formatResults("nothing", nil); got != `No results for "nothing".` {
		t.Errorf("empty: %q", got)
	}
}

func TestReadToken(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Setenv(tokenEnv, " cbt_from_env\n")
	tok, err := readToken("", log)
	if err != nil || tok != "cbt_from_env" {
		t.Errorf("from env: %q, %v", tok, err)
	}
	if v, ok := os.LookupEnv(tokenEnv); ok {
		t.Errorf("%s still set to %q after reading", tokenEnv, v)
	}

	t.Setenv(tokenEnv, "cbt_from_env")
	tok, err = readToken(write("tok", "cbt_from_file\n"), log)
	if err != nil || tok != "cbt_from_file" {
		t.Errorf("file wins over env: %q, %v", tok, err)
	}
	if _, err := readToken(write("empty", "\n"), log); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty file: %v", err)
	}
	if _, err := readToken(filepath.Join(dir, "missing"), log); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("missing file: %v", err)
	}
	big := write("big", "cbt_x"+strings.Repeat(" ", 4096)) // over client.ReadTokenFile's 4 KiB
	if _, err := readToken(big, log); err == nil || !strings.Contains(err.Error(), "larger than 4096 bytes") {
		t.Errorf("oversized file: %v", err)
	}
	t.Setenv(tokenEnv, "")
	if tok, err := readToken("", log); tok != "" || err != nil {
		t.Errorf("nothing configured: %q, %v", tok, err)
	}
}

// TestReadTokenFIFO: a FIFO nobody writes to, named by --token-file, is refused at once (as
// empty); waiting for a writer would leave the MCP client waiting for an initialize answer that
// never comes. A pipe with a writer (a shell's <(…)) is read.
func TestReadTokenFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.Write([]byte("cbt_from_pipe\n"))
		w.Close()
	}()
	for _, tc := range []struct{ name, path, want string }{
		{"fifo without a writer", fifo, "is empty"},
		{"pipe with a writer", fmt.Sprintf("/proc/self/fd/%d", r.Fd()), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type answer struct {
				tok string
				err error
			}
			got := make(chan answer, 1)
			go func() {
				tok, err := readToken(tc.path, slog.New(slog.DiscardHandler))
				got <- answer{tok, err}
			}()
			// The bound only turns a hang into a failure; a fixed reader answers at once.
			select {
			case a := <-got:
				if tc.want == "" && (a.err != nil || a.tok != "cbt_from_pipe") {
					t.Fatalf("got %q %v, want the token written to the pipe", a.tok, a.err)
				}
				if tc.want != "" && (a.err == nil || !strings.Contains(a.err.Error(), tc.want)) {
					t.Fatalf("got %v, want a refusal saying %q", a.err, tc.want)
				}
			case <-time.After(10 * time.Second):
				if w, err := os.OpenFile(tc.path, os.O_WRONLY, 0); err == nil { // release the reader
					w.Close()
				}
				t.Fatal("readToken waits for a writer on a FIFO")
			}
		})
	}
}

// equalJSON compares values decoded from JSON with expected Go values, numbers as float64.
func equalJSON(got, want any) bool {
	switch w := want.(type) {
	case int:
		g, ok := got.(float64)
		return ok && g == float64(w)
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !equalJSON(g[i], w[i]) {
				return false
			}
		}
		return true
	}
	return got == want
}

// TestKeyReflectedNeverReachesAgent: an upstream that echoes the key in a successful answer must
// not get it into what the agent sees (text and structured content) or either log.
func TestKeyReflectedNeverReachesAgent(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	s := start(t, tb.socket, tok)
	tb.fake.SetFault(scaviotest.Fault{EchoKeyInResults: true})

	res := s.call(t, webSearch, map[string]any{"query": "canary"})
	if res.IsError {
		t.Fatalf("tool error: %s", text(res))
	}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	for where, s := range map[string]string{"tool result": string(raw), "brokerd log": tb.log.String(), "scavio-mcp log": s.log.String()} {
		if strings.Contains(s, testKey) {
			t.Errorf("%s holds the key: %s", where, s)
		}
	}
	if !strings.Contains(text(res), "[REDACTED]") {
		t.Errorf("text does not show the redaction:\n%s", text(res))
	}
}
