package scaviotest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

const key = "sk_test_fake1"

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func post(t *testing.T, s *scaviotest.Server, path, auth, k, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	switch auth {
	case "x-api-key":
		req.Header.Set("x-api-key", k)
	case "bearer":
		req.Header.Set("Authorization", "Bearer "+k)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("%s %s: body %q is not a JSON object", path, resp.Status, raw)
	}
	return a
}

func errCode(a answer) string {
	e, _ := a.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestContracts(t *testing.T) {
	s := scaviotest.NewServer(key)
	t.Cleanup(s.Close)
	tests := []struct {
		name        string
		path, auth  string
		body        string
		wantStatus  int
		wantCode    string
		wantResults int
		check       func(t *testing.T, a answer)
	}{
		{name: "A default num_results", path: scaviotest.SearchPath, auth: "x-api-key", body: `{"query":"golang"}`, wantStatus: 200, wantResults: 5,
			check: func(t *testing.T, a answer) {
				r := a.body["results"].([]any)[0].(map[string]any)
				if r["title"] != "Result 1 for golang" || r["source"] != "fake" || r["position"] != 1.0 || a.body["credits_used"] != 1.0 || a.body["query"] != "golang" {
					t.Errorf("first result %v, body %v", r, a.body)
				}
			}},
		{name: "A num_results 12", path: scaviotest.SearchPath, auth: "x-api-key", body: `{"query":"q","num_results":12}`, wantStatus: 200, wantResults: 12},
		{name: "A empty query", path: scaviotest.SearchPath, auth: "x-api-key", body: `{"query":""}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "A query too long", path: scaviotest.SearchPath, auth: "x-api-key", body: `{"query":"` + strings.Repeat("x", 501) + `"}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "A num_results 101", path: scaviotest.SearchPath, auth: "x-api-key", body: `{"query":"q","num_results":101}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "A not JSON", path: scaviotest.SearchPath, auth: "x-api-key", body: `query=q`, wantStatus: 400, wantCode: "bad_request"},
		{name: "A bearer is the wrong style", path: scaviotest.SearchPath, auth: "bearer", body: `{"query":"q"}`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "B defaults", path: scaviotest.GooglePath, auth: "bearer", body: `{"query":"golang"}`, wantStatus: 200, wantResults: 10,
			check: func(t *testing.T, a answer) {
				r := a.body["results"].([]any)[9].(map[string]any)
				if a.body["search_type"] != "classic" || a.body["page"] != 1.0 || r["title"] != "Result 10 for golang" || r["displayed_link"] == nil {
					t.Errorf("last result %v, body %v", r, a.body)
				}
			}},
		{name: "B all fields", path: scaviotest.GooglePath, auth: "bearer",
			body:       `{"query":"q","search_type":"news","country_code":"us","language":"en","page":2,"device":"desktop","nfpr":true,"light_request":false}`,
			wantStatus: 200, wantResults: 10,
			check: func(t *testing.T, a answer) {
				r := a.body["results"].([]any)[0].(map[string]any)
				if a.body["search_type"] != "news" || a.body["page"] != 2.0 || r["position"] != 11.0 || a.body["credits_used"] != 2.0 {
					t.Errorf("first result %v, body %v", r, a.body)
				}
			}},
		{name: "B bad search_type", path: scaviotest.GooglePath, auth: "bearer", body: `{"query":"q","search_type":"videos"}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "B news on mobile", path: scaviotest.GooglePath, auth: "bearer", body: `{"query":"q","search_type":"news","device":"mobile"}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "B contract A field", path: scaviotest.GooglePath, auth: "bearer", body: `{"query":"q","num_results":5}`, wantStatus: 400, wantCode: "bad_request"},
		{name: "B x-api-key is the wrong style", path: scaviotest.GooglePath, auth: "x-api-key", body: `{"query":"q"}`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "no key", path: scaviotest.GooglePath, auth: "", body: `{"query":"q"}`, wantStatus: 401, wantCode: "unauthorized"},
		{name: "unknown path", path: "/api/v1/bing", auth: "bearer", body: `{"query":"q"}`, wantStatus: 404, wantCode: "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := post(t, s, tt.path, tt.auth, key, tt.body)
			if a.status != tt.wantStatus || errCode(a) != tt.wantCode {
				t.Fatalf("got %d %q (%s), want %d %q", a.status, errCode(a), a.raw, tt.wantStatus, tt.wantCode)
			}
			for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
				if a.header.Get(h) == "" {
					t.Errorf("missing %s", h)
				}
			}
			if tt.wantResults > 0 {
				if n := len(a.body["results"].([]any)); n != tt.wantResults {
					t.Errorf("%d results, want %d", n, tt.wantResults)
				}
			}
			if tt.check != nil {
				tt.check(t, a)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	s := scaviotest.NewServer(key)
	t.Cleanup(s.Close)
	a := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"same"}`)
	b := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"same"}`)
	if a.raw != b.raw {
		t.Errorf("same query, different answers:\n%s\n%s", a.raw, b.raw)
	}
}

func TestWrongKeyAndRevoke(t *testing.T) {
	s := scaviotest.NewServer(key)
	t.Cleanup(s.Close)
	if a := post(t, s, scaviotest.SearchPath, "x-api-key", "sk_test_wrong", `{"query":"q"}`); a.status != 401 {
		t.Errorf("wrong key: %d, want 401", a.status)
	} else if msg := a.body["error"].(map[string]any)["message"]; msg != "invalid api key" {
		t.Errorf("401 message %q", msg)
	}

	// Rotation as the dashboard does it: add the new key, both work, revoke the old one.
	s.AddKey("sk_test_new")
	for _, k := range []string{key, "sk_test_new"} {
		if a := post(t, s, scaviotest.SearchPath, "x-api-key", k, `{"query":"q"}`); a.status != 200 {
			t.Errorf("key %s during rotation: %d", k, a.status)
		}
	}
	s.RevokeKey(key)
	if a := post(t, s, scaviotest.SearchPath, "x-api-key", key, `{"query":"q"}`); a.status != 401 {
		t.Errorf("revoked key: %d, want 401", a.status)
	}
	if a := post(t, s, scaviotest.SearchPath, "x-api-key", "sk_test_new", `{"query":"q"}`); a.status != 200 {
		t.Errorf("new key after revoke: %d, want 200", a.status)
	}

	s.SetKeys("sk_test_only")
	if a := post(t, s, scaviotest.SearchPath, "x-api-key", "sk_test_new", `{"query":"q"}`); a.status != 401 {
		t.Errorf("key dropped by SetKeys: %d, want 401", a.status)
	}

	reqs := s.Requests()
	if len(reqs) != s.Count() || len(reqs) != 6 {
		t.Fatalf("Requests() has %d, Count() %d, want 6", len(reqs), s.Count())
	}
	if r := reqs[0]; r.Path != scaviotest.SearchPath || r.Auth != "x-api-key" || r.Key != "sk_test_wrong" || r.KeyOK || r.Body["query"] != "q" || r.Time.IsZero() {
		t.Errorf("first recorded request %+v", r)
	}
	if r := reqs[1]; !r.KeyOK || r.Key != key {
		t.Errorf("second recorded request %+v", r)
	}
	reqs[1].Body["query"] = "mutated"
	if s.Requests()[1].Body["query"] != "q" {
		t.Error("Requests() returned the server's own map")
	}
}

func TestFault(t *testing.T) {
	s := scaviotest.NewServer(key)
	t.Cleanup(s.Close)

	s.SetFault(scaviotest.Fault{Status: 429, RetryAfter: "7", Times: 2})
	for i := range 2 {
		a := post(t, s, scaviotest.SearchPath, "x-api-key", key, `{"query":"q"}`)
		if a.status != 429 || errCode(a) != "rate_limit_exceeded" || a.header.Get("Retry-After") != "7" || a.header.Get("X-RateLimit-Remaining") != "0" {
			t.Errorf("request %d under fault: %d %s %v", i, a.status, a.raw, a.header)
		}
	}
	if a := post(t, s, scaviotest.SearchPath, "x-api-key", key, `{"query":"q"}`); a.status != 200 {
		t.Errorf("after Times ran out: %d, want 200", a.status)
	}

	s.SetFault(scaviotest.Fault{Status: 500}) // until cleared
	for range 3 {
		if a := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"q"}`); a.status != 500 || errCode(a) != "internal_error" {
			t.Errorf("persistent fault: %d %s", a.status, a.raw)
		}
	}
	s.SetFault(scaviotest.Fault{})
	if a := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"q"}`); a.status != 200 {
		t.Errorf("after clearing: %d, want 200", a.status)
	}

	s.SetFault(scaviotest.Fault{Status: 401, EchoKey: true, Times: 1})
	if a := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"q"}`); a.status != 401 || !strings.Contains(a.raw, key) {
		t.Errorf("EchoKey: %d %s, want 401 containing the key", a.status, a.raw)
	}

	s.SetFault(scaviotest.Fault{Delay: 150 * time.Millisecond, Times: 1})
	start := time.Now()
	if a := post(t, s, scaviotest.GooglePath, "bearer", key, `{"query":"q"}`); a.status != 200 || time.Since(start) < 150*time.Millisecond {
		t.Errorf("Delay: %d after %v", a.status, time.Since(start))
	}
}

func TestMethodNotAllowed(t *testing.T) {
	s := scaviotest.NewServer(key)
	t.Cleanup(s.Close)
	resp, err := http.Get(s.URL + scaviotest.SearchPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %d Allow=%q, want 405 POST", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestUnstartedHandler(t *testing.T) {
	s := scaviotest.NewUnstartedHandler(key)
	defer s.Close() // no-op, must not panic
	req, _ := http.NewRequest(http.MethodPost, scaviotest.SearchPath, bytes.NewReader([]byte(`{"query":"q"}`)))
	req.Header.Set("x-api-key", key)
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 || s.URL != "" {
		t.Errorf("status %d, URL %q", rec.Code, s.URL)
	}
}
