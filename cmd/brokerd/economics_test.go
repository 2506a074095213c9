package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The economics commands end to end: a credential limiter and ceiling, a token budget, the result
// cache, and usage.
func TestEconomicsEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--cache-ttl", "10m,google_search=0")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	r := e.ctl(t, "", "credential", "policy", "scavio_api_key", "--rate", "20/s", "--burst", "5", "--monthly-credits", "100").ok(t)
	if !strings.Contains(r.stdout, "rate 20 per 1s, burst 5") || !strings.Contains(r.stdout, "0 of 100 monthly credits used") {
		t.Fatalf("policy output: %s", r.stdout)
	}
	tok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search,google_search", "--budget", "3/d", "--label", "agent-a").ok(t).stdout)

	before := e.fake.Count()
	e.search(t, tok, "cached query").ok(t)
	r = e.search(t, tok, "cached query").ok(t)
	if !strings.Contains(r.stdout, "from the broker's cache") || !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("second search: %s", r.stdout)
	}
	r = e.search(t, tok, "--json", "cached query").ok(t)
	var js struct {
		Cached  bool   `json:"cached"`
		Credits uint64 `json:"credits"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || !js.Cached || js.Credits != 0 {
		t.Fatalf("search --json: %v %s", err, r.stdout)
	}
	if n := e.fake.Count() - before; n != 1 {
		t.Fatalf("three identical searches made %d upstream calls, want 1", n)
	}
	e.search(t, tok, "--no-cache", "cached query").ok(t)            // credit 2
	e.search(t, tok, "--tool", "google_search", "not cached").ok(t) // credit 3: google_search cache is off
	e.search(t, tok, "--tool", "google_search", "not cached").fails(t, "budget of 3/day used; resets at")
	if r := e.ctl(t, "", "token", "inspect", strings.Split(tok, "_")[1]).ok(t); !strings.Contains(r.stdout, "3 of 3 credits spent this day") {
		t.Fatalf("token inspect does not show the spent budget:\n%s", r.stdout)
	}

	r = e.ctl(t, "", "usage").ok(t)
	if !strings.Contains(r.stdout, "agent-a") || !strings.Contains(r.stdout, "credits saved by the cache: 2") {
		t.Fatalf("usage: %s", r.stdout)
	}
	r = e.ctl(t, "", "usage", "--by", "credential", "--json").ok(t)
	var u struct {
		Rows []struct {
			Key       string `json:"key"`
			Calls     uint64 `json:"calls"`
			Credits   uint64 `json:"credits"`
			CacheHits uint64 `json:"cache_hits"`
			Errors    uint64 `json:"errors"`
		} `json:"rows"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &u); err != nil || len(u.Rows) != 1 || u.Rows[0].Key != "scavio_api_key" ||
		u.Rows[0].Calls != 6 || u.Rows[0].Credits != 3 || u.Rows[0].CacheHits != 2 || u.Rows[0].Errors != 1 {
		t.Fatalf("usage by credential: %v %s", err, r.stdout)
	}
	r = e.ctl(t, "", "credential", "list", "--json").ok(t)
	if !strings.Contains(r.stdout, `"scavio_api_key"`) {
		t.Fatalf("list: %s", r.stdout)
	}
	e.ctl(t, "", "credential", "policy", "scavio_api_key", "--clear-limits").ok(t)
	e.ctl(t, "", "usage", "--by", "label").fails(t, "token or credential")
}

// Issue 15 items 1 and 8 end to end: a search canceled after it reached the upstream still spends
// the budget and the credential's ceiling (its answer is cached for the retry), and credits the
// upstream reports past a budget show as an overshoot and refuse further calls.
func TestEconomicsCancelAndOvershoot(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--cache-ttl", "10m")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	e.ctl(t, "", "credential", "policy", "scavio_api_key", "--monthly-credits", "3").ok(t)
	tok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search", "--budget", "2/d", "--label", "canceller").ok(t).stdout)

	arrived, hold := make(chan struct{}), make(chan struct{})
	e.fake.SetFault(scaviotest.Fault{Arrived: arrived, Hold: hold, CreditsUsed: 2, Times: 1})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-arrived; cancel() }()
	_, err := e.client(t, client.WithToken(tok)).Search(ctx, &credbrokerv1.SearchRequest{Query: "slow"})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("canceled search: %v", err)
	}
	close(hold)
	if r := e.search(t, tok, "slow").ok(t); !strings.Contains(r.stdout, "from the broker's cache") {
		t.Fatalf("the retry after the cancel was not answered from the cache:\n%s", r.stdout)
	}
	e.search(t, tok, "another").fails(t, "budget of 2/day used")
	if n := e.fake.Count(); n != 1 {
		t.Fatalf("upstream saw %d requests, want 1", n)
	}
	id := strings.Split(tok, "_")[1]
	if r := e.ctl(t, "", "token", "inspect", id).ok(t); !strings.Contains(r.stdout, "2 of 2 credits spent this day") {
		t.Fatalf("token inspect after the canceled call:\n%s", r.stdout)
	}
	if r := e.ctl(t, "", "credential", "policy", "scavio_api_key", "--monthly-credits", "3").ok(t); !strings.Contains(r.stdout, "2 of 3 monthly credits used") {
		t.Fatalf("credential policy after the canceled call:\n%s", r.stdout)
	}
	var u struct {
		Rows []struct {
			Label   string `json:"label"`
			Credits uint64 `json:"credits"`
		} `json:"rows"`
	}
	r := e.ctl(t, "", "usage", "--json").ok(t)
	if err := json.Unmarshal([]byte(r.stdout), &u); err != nil || len(u.Rows) != 1 || u.Rows[0].Credits != 2 {
		t.Fatalf("usage after the canceled call: %v %s", err, r.stdout)
	}

	// Overshoot: the upstream reports 50 credits against a budget of 10.
	e.ctl(t, "", "credential", "policy", "scavio_api_key", "--clear-limits").ok(t)
	big := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search", "--budget", "10/d").ok(t).stdout)
	e.fake.SetFault(scaviotest.Fault{CreditsUsed: 50})
	e.search(t, big, "expensive").ok(t)
	e.search(t, big, "expensive too").fails(t, "budget of 10/day used")
	if r := e.ctl(t, "", "token", "inspect", strings.Split(big, "_")[1]).ok(t); !strings.Contains(r.stdout, "50 of 10 credits spent this day (overshoot 40") {
		t.Fatalf("token inspect does not show the overshoot:\n%s", r.stdout)
	}
	if r := e.ctl(t, "", "status").ok(t); !strings.Contains(r.stdout, "50 of its 10 credits spent this day (overshoot 40)") {
		t.Fatalf("status does not warn of the overshoot:\n%s", r.stdout)
	}
}
