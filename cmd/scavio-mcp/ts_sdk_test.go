package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/peercred"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestTypeScriptSDKNoToken: an MCP client on the official TypeScript SDK drives the scavio-mcp
// binary configured with no token at all, across several token lifetimes, with no failed call.
// .ci/run installs the SDK (npm, pinned) and sets CREDBROKER_TS_SDK, a directory
// holding node_modules/@modelcontextprotocol/sdk (`npm install @modelcontextprotocol/sdk@1`).
func TestTypeScriptSDKNoToken(t *testing.T) {
	sdk := os.Getenv("CREDBROKER_TS_SDK")
	if sdk == "" {
		t.Skip("set CREDBROKER_TS_SDK to a directory with node_modules/@modelcontextprotocol/sdk to run")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH")
	}
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
	}
	// The script must sit beside node_modules for Node to resolve the SDK.
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(sdk, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join("testdata", "ts-sdk-client.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.mjs"), script, 0o644); err != nil {
		t.Fatal(err)
	}
	tb := startBroker(t, true)
	if _, err := tb.admin.AddWorkload(testContext(t), &credbrokerv1.AddWorkloadRequest{Workload: &credbrokerv1.Workload{
		Name: "scavio-mcp", Tools: []string{webSearch, googleSearch}, Uids: []uint32{uint32(os.Getuid())}, Exe: binPath,
		Ttl: durationpb.New(time.Second),
	}, PinExe: true}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(node, filepath.Join(dir, "client.mjs"), tb.socket, binPath, "4000").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tools: google_search,web_search") || !strings.Contains(string(out), "calls ok:") {
		t.Fatalf("TypeScript SDK client: %v\n%s", err, out)
	}
	resp, err := tb.admin.ListTokens(testContext(t), &credbrokerv1.ListTokensRequest{IncludeExpired: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetTokens()); n < 3 {
		t.Fatalf("%d tokens fetched over 4s of 1s tokens; the client did not renew", n)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "calls ok:") {
			t.Logf("%s across %d tokens", line, len(resp.GetTokens()))
		}
	}
}
