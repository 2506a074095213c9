package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// A search held for a limiter slot for more than a second says so on stderr (stdout stays the
// results); a shorter wait is not worth a line.
func TestSearchSaysWhenItWaitedForARateLimitSlot(t *testing.T) {
	tests := []struct {
		wait time.Duration
		want string // on stderr; "" for nothing
	}{
		{0, ""},
		{900 * time.Millisecond, ""},
		{time.Second, ""},
		{2*time.Second + 40*time.Millisecond, "brokerctl: waited 2s for a rate-limit slot on scavio_api_key"},
		{12*time.Second + 350*time.Millisecond, "brokerctl: waited 12.4s for a rate-limit slot on scavio_api_key"},
	}
	for _, tc := range tests {
		for _, asJSON := range []bool{false, true} {
			resp := &credbrokerv1.SearchResponse{Tool: "web_search", Credential: "scavio_api_key", CredentialVersion: 1}
			if tc.wait > 0 {
				resp.RateLimitWait = durationpb.New(tc.wait)
			}
			args := []string{"search", "q"}
			if asJSON {
				args = []string{"search", "--json", "q"}
			}
			r := runCmd(t, &fakeAPI{results: resp}, "", map[string]string{"CREDBROKER_TOKEN": "cbt_x_y"}, args...)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if tc.want == "" && r.stderr != "" || tc.want != "" && !strings.HasPrefix(r.stderr, tc.want) {
				t.Errorf("wait %s json=%v: stderr %q, want %q", tc.wait, asJSON, r.stderr, tc.want)
			}
			if strings.Contains(r.stdout, "rate-limit slot") {
				t.Errorf("wait %s: the notice went to stdout", tc.wait)
			}
		}
	}
}

var limited = &credbrokerv1.Credential{
	Name: "scavio_api_key", Version: 2, CreditsThisMonth: 12,
	Limits: &credbrokerv1.CredentialLimits{RateLimit: 10, RatePeriod: durationpb.New(time.Minute), Burst: 2,
		MaxWait: durationpb.New(30 * time.Second), MonthlyCredits: 100},
}

const limitedLine = "rate 10/1m burst 2 max-wait 30s, credits 12/100 this month"

func TestCredentialListShowsLimits(t *testing.T) {
	plain := &credbrokerv1.Credential{Name: "other", Version: 1}
	f := &fakeAPI{creds: []*credbrokerv1.Credential{plain, limited}}
	r := runCmd(t, f, "", nil, "credential", "list")
	if r.err != nil {
		t.Fatal(r.err)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], "LIMITS") || !strings.HasSuffix(lines[1], " -") || !strings.HasSuffix(lines[2], " "+limitedLine) {
		t.Fatalf("credential list:\n%s", r.stdout)
	}

	r = runCmd(t, f, "", nil, "credential", "list", "--json")
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got[0]["limits"]; ok {
		t.Errorf("a credential without limits has a limits object: %v", got[0])
	}
	want := map[string]any{"rate_limit": 10.0, "rate_period": "1m", "rate_period_seconds": 60.0, "burst": 2.0, "max_wait": "30s",
		"max_wait_seconds": 30.0, "monthly_credits": 100.0, "credits_this_month": 12.0}
	l, _ := got[1]["limits"].(map[string]any)
	for k, v := range want {
		if l[k] != v {
			t.Errorf("limits.%s = %v, want %v (all: %v)", k, l[k], v, l)
		}
	}
}

func TestStatusShowsLimits(t *testing.T) {
	f := newRotFake() // rotation_test.go: a fake whose Status answers f.status
	f.status = &credbrokerv1.StatusResponse{Version: "v", Uptime: durationpb.New(time.Minute), LimitedCredentials: []*credbrokerv1.Credential{limited}}
	r := runRot(t, f, "", nil, "status")
	if r.err != nil || !strings.Contains(r.stdout, "limits scavio_api_key:  "+limitedLine+"\n") {
		t.Fatalf("status does not show the limits (%v):\n%s", r.err, r.stdout)
	}
	r = runRot(t, f, "", nil, "status", "--json")
	var js statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js.Limits) != 1 {
		t.Fatalf("status --json: %v %s", err, r.stdout)
	}
	if l := js.Limits[0]; l.Credential != "scavio_api_key" || l.RateLimit != 10 || l.RatePeriod != "1m" || l.Burst != 2 || l.MaxWait != "30s" ||
		l.MonthlyCredits != 100 || l.CreditsThisMonth != 12 {
		t.Fatalf("status --json limits: %+v", l)
	}
	// Without limits the list is there and empty, not null.
	f.status = &credbrokerv1.StatusResponse{Version: "v"}
	if r = runRot(t, f, "", nil, "status", "--json"); !strings.Contains(r.stdout, `"limits": []`) {
		t.Fatalf("status --json without limits: %s", r.stdout)
	}
}
