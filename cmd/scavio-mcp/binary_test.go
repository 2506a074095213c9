package main

// Subprocess tests: the SDK's client starts the built scavio-mcp over stdio, as an MCP client
// application would.

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// binEnv is the test's environment without any CREDBROKER_* variable, plus extra.
func binEnv(extra ...string) []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CREDBROKER_") })
	return append(env, extra...)
}

// startBinary runs scavio-mcp with env and connects to it. wire records every JSON-RPC message
// in both directions (so everything the binary wrote to stdout); stderr is the binary's stderr.
func startBinary(t *testing.T, env []string, args ...string) (cs *mcp.ClientSession, wire, stderr *logtest.Buffer) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = env
	stderr, wire = &logtest.Buffer{}, &logtest.Buffer{}
	cmd.Stderr = stderr
	transport := &mcp.LoggingTransport{Transport: &mcp.CommandTransport{Command: cmd, TerminateDuration: 5 * time.Second}, Writer: wire}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).Connect(testContext(t), transport, nil)
	if err != nil {
		t.Fatalf("connect to scavio-mcp: %v\nstderr:\n%s", err, stderr)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil { // not closed by the test itself
			cs.Close()
		}
	})
	return cs, wire, stderr
}

func TestBinaryWebSearch(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, webSearch)
	cs, wire, stderr := startBinary(t, binEnv("CREDBROKER_SOCKET="+tb.socket, "CREDBROKER_TOKEN="+tok), "--log-level", "debug")
	s := &session{ClientSession: cs, log: stderr}

	if got := s.toolNames(t); !slices.Equal(got, []string{webSearch}) {
		t.Errorf("tools/list = %v, want [web_search]", got)
	}
	res := s.call(t, webSearch, map[string]any{"query": "unix sockets", "num_results": 2})
	if res.IsError {
		t.Fatalf("tool error: %s\nstderr:\n%s", text(res), stderr)
	}
	if out := structured(t, res); len(out.Results) != 2 || !strings.HasPrefix(text(res), "1. ") {
		t.Errorf("results %+v, text:\n%s", out.Results, text(res))
	}

	// An upstream that echoes the key in its error: brokerd must redact it, and nothing reaches
	// the MCP client or the log.
	tb.fake.SetFault(scaviotest.Fault{Status: 401, EchoKey: true})
	wantToolError(t, s.call(t, webSearch, map[string]any{"query": "again"}), "brokerctl rotate scavio_api_key")

	// Closing stdin is how an MCP client stops a stdio server: it must exit cleanly.
	if err := cs.Close(); err != nil {
		t.Errorf("scavio-mcp did not exit cleanly: %v\nstderr:\n%s", err, stderr)
	}

	for name, out := range map[string]string{"stdout (MCP messages)": wire.String(), "stderr": stderr.String()} {
		if strings.Contains(out, testKey) {
			t.Errorf("%s contains the Scavio key:\n%s", name, out)
		}
	}
	if strings.Contains(stderr.String(), tok) {
		t.Errorf("stderr contains the broker token:\n%s", stderr)
	}
	if !strings.Contains(stderr.String(), "connected to brokerd") || !strings.Contains(wire.String(), "unix sockets") {
		t.Errorf("expected log on stderr and the call on stdout;\nstderr:\n%s\nwire:\n%s", stderr, wire)
	}
}

func TestBinaryTokenFile(t *testing.T) {
	tb := startBroker(t, true)
	tok, _ := tb.mint(t, time.Hour, googleSearch)
	file := t.TempDir() + "/token"
	if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cs, _, stderr := startBinary(t, binEnv("CREDBROKER_TOKEN=cbt_ignored"), "--socket", tb.socket, "--token-file", file)
	s := &session{ClientSession: cs, log: stderr}
	if got := s.toolNames(t); !slices.Equal(got, []string{googleSearch}) {
		t.Errorf("tools/list = %v, want [google_search]\nstderr:\n%s", got, stderr)
	}
	if res := s.call(t, googleSearch, map[string]any{"query": "x", "search_type": "maps"}); res.IsError {
		t.Errorf("tool error: %s", text(res))
	}
}

func TestBinaryNoToken(t *testing.T) {
	tb := startBroker(t, true)
	cs, _, stderr := startBinary(t, binEnv("CREDBROKER_SOCKET="+tb.socket))
	s := &session{ClientSession: cs, log: stderr}
	if got := s.toolNames(t); len(got) != 2 {
		t.Errorf("tools/list = %v, want both tools", got)
	}
	// No token and no registration: attestation is refused, and the text says how to register.
	res := s.call(t, webSearch, map[string]any{"query": "x"})
	wantToolError(t, res, "none are registered", "brokerctl workload add")
	if !strings.Contains(stderr.String(), "fetching tokens by attestation") {
		t.Errorf("stderr does not explain:\n%s", stderr)
	}

	// Registered (its uid, its executable pinned by digest): the same binary, with no token at
	// all, searches.
	if _, err := tb.admin.AddWorkload(testContext(t), &credbrokerv1.AddWorkloadRequest{Workload: &credbrokerv1.Workload{
		Name: "scavio-mcp", Tools: []string{webSearch}, Uids: []uint32{uint32(os.Getuid())}, Exe: binPath,
	}, PinExe: true}); err != nil {
		t.Fatal(err)
	}
	cs, _, stderr = startBinary(t, binEnv("CREDBROKER_SOCKET="+tb.socket))
	s = &session{ClientSession: cs, log: stderr}
	if got := s.toolNames(t); !slices.Equal(got, []string{webSearch}) {
		t.Errorf("registered: tools/list = %v, want [web_search]\nstderr:\n%s", got, stderr)
	}
	if res := s.call(t, webSearch, map[string]any{"query": "x"}); res.IsError {
		t.Errorf("registered, no token: %s", text(res))
	}
}

func TestBinaryRefusesTokenOnCommandLine(t *testing.T) {
	// A token pasted on the command line is refused without being echoed.
	for _, args := range [][]string{{"cbt_pasted_secret"}, {"--token=cbt_pasted_secret"}, {"--token", "cbt_pasted_secret"}} {
		cmd := exec.Command(binPath, args...)
		cmd.Env = binEnv()
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%v: scavio-mcp started; output:\n%s", args, out)
		}
		if strings.Contains(string(out), "cbt_pasted_secret") || !strings.Contains(string(out), "CREDBROKER_TOKEN") {
			t.Errorf("%v: output:\n%s", args, out)
		}
	}
}
