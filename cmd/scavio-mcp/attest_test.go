package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/peercred"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestNoTokenRenewsAcrossTTLs: scavio-mcp configured with no token at all gets its tokens by
// attestation, and its client renews them across several short lifetimes with no failed call.
func TestNoTokenRenewsAcrossTTLs(t *testing.T) {
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	tb := startBroker(t, true)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 900 * time.Millisecond
	_, err = tb.admin.AddWorkload(testContext(t), &credbrokerv1.AddWorkloadRequest{Workload: &credbrokerv1.Workload{
		Name: "scavio-mcp", Tools: []string{webSearch, googleSearch}, Uids: []uint32{uint32(os.Getuid())}, Exe: self,
		Ttl: durationpb.New(ttl),
	}, PinExe: true})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, tb.socket, "")
	if got := s.toolNames(t); len(got) != 2 {
		t.Fatalf("tools offered: %v", got)
	}
	fetched := func() int {
		resp, err := tb.admin.ListTokens(testContext(t), &credbrokerv1.ListTokensRequest{IncludeExpired: true})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, tok := range resp.GetTokens() {
			if tok.GetLabel() == "workload:scavio-mcp" {
				n++
			}
		}
		return n
	}
	calls := 0
	for fetched() < 4 { // the first token and three renewals
		res := s.call(t, webSearch, map[string]any{"query": "renewal"})
		if res.IsError {
			t.Fatalf("call %d failed: %s", calls, text(res))
		}
		calls++
		time.Sleep(20 * time.Millisecond) // an agent's pace, not a synchronisation
	}
	t.Logf("%d calls across %d tokens, none failed", calls, fetched())
	if strings.Contains(s.log.String(), "cbt_") {
		t.Errorf("server log contains a token:\n%s", s.log)
	}
}
