package main

// The Python and TypeScript clients (client/python, client/typescript) and their examples, run as
// real python3 / node processes against a real brokerd and the fake upstream. They skip, saying
// why, without Debian's python3-grpcio / python3-protobuf or without node and client/typescript's
// npm packages (scripts/gen.sh installs those; .ci/run installs all of it).

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/credbroker/credbroker/broker/peercred"
)

// repoDir is the repository root, from cmd/brokerd.
var repoDir, _ = filepath.Abs(filepath.Join("..", ".."))

// grpcPython returns a python3 that can import grpc and google.protobuf: $CREDBROKER_PYTHON, the
// python3 on PATH, or Debian's /usr/bin/python3 (where apt-get put python3-grpcio even when PATH
// leads to another Python).
func grpcPython(t *testing.T) string {
	t.Helper()
	cands := []string{os.Getenv("CREDBROKER_PYTHON")}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	cands = append(cands, "/usr/bin/python3")
	for _, p := range cands {
		if p != "" && exec.Command(p, "-c", "import grpc, google.protobuf").Run() == nil {
			return p
		}
	}
	t.Skip("no python3 with grpc and protobuf (apt-get install python3-grpcio python3-protobuf, or set CREDBROKER_PYTHON)")
	return ""
}

var (
	tsOnce sync.Once
	tsDir  string
	tsErr  string
)

// tsBuild compiles client/typescript (wrapper, examples, test drivers) once per test binary into
// a temp dir beside a link to its node_modules, and returns that dir.
func tsBuild(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("no node on PATH")
	}
	src := filepath.Join(repoDir, "client", "typescript")
	tsc := filepath.Join(src, "node_modules", ".bin", "tsc")
	if _, err := os.Stat(tsc); err != nil {
		t.Skip("client/typescript/node_modules is not installed (scripts/gen.sh runs npm ci there)")
	}
	tsOnce.Do(func() {
		dir, err := os.MkdirTemp(binDir, "ts-") // removed with binDir by TestMain
		if err != nil {
			tsErr = err.Error()
			return
		}
		out, err := exec.Command(tsc, "-p", src, "--outDir", dir).CombinedOutput()
		if err != nil {
			tsErr = "tsc: " + err.Error() + "\n" + string(out)
			return
		}
		// Node resolves packages from the script's directory up, and takes the module type from
		// the nearest package.json.
		if err := os.Symlink(filepath.Join(src, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
			tsErr = err.Error()
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"type": "module"}`), 0o644); err != nil {
			tsErr = err.Error()
			return
		}
		tsDir = dir
	})
	if tsErr != "" {
		t.Fatal(tsErr)
	}
	return tsDir
}

// mint returns a token (and its id) for tools, with extra `token mint` flags.
func (e *env) mint(t *testing.T, tools string, extra ...string) (string, string) {
	t.Helper()
	r := e.ctl(t, "", append([]string{"token", "mint", "--tools", tools, "--ttl", "30m", "--json"}, extra...)...).ok(t)
	var m struct{ Token, ID string }
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m.Token == "" {
		t.Fatalf("mint: %v %s", err, r.stdout)
	}
	return m.Token, m.ID
}

// runClient runs a client process with the broker's socket and, unless token is "", a token in its
// environment; it returns the output whatever the exit status, and the exit error.
func (e *env) runClient(t *testing.T, token string, extraEnv []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDBROKER_") {
			env = append(env, kv)
		}
	}
	env = append(env, "CREDBROKER_SOCKET="+e.socket)
	if token != "" {
		env = append(env, "CREDBROKER_TOKEN="+token)
	}
	cmd.Env = append(env, extraEnv...)
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), itKey) {
		t.Fatalf("the upstream key reached a client:\n%s", out)
	}
	return string(out), err
}

// lastJSON decodes the last line of out.
func lastJSON(t *testing.T, out string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("last line is not JSON: %v\n%s", err, out)
	}
	return m
}

// pyProbe searches once per query and prints one JSON line each: the typed fields and raw dict, or
// the error's code, reason and retry delay. The socket and token come from the environment.
const pyProbe = `
import json, sys
import credbroker
import os
with credbroker.Client(token_file=os.environ.get("TOKEN_FILE")) as c:
    for q in sys.argv[1:]:
        try:
            r = c.search(q, num_results=2)
            print(json.dumps({"ok": True, "titles": [x.title for x in r.results],
                              "raw_is_dict": all(type(x.raw) is dict for x in r.results),
                              "position_is_int": all(type(x.raw.get("position", 0)) is int for x in r.results),
                              "raw": r.results[0].raw, "credits": r.credits}))
        except credbroker.BrokerError as e:
            print(json.dumps({"ok": False, "code": e.code.name, "reason": e.reason,
                              "retry_delay": e.retry_delay, "metadata": e.metadata}))
`

// pyAttested drives the Python client's attestation token source with a fake clock and a fake
// FetchToken, as client/typescript/test/attested.ts does the TypeScript client's: one line per step,
// the token the step got (or the error's code) and how many fetches were made so far.
const pyAttested = `
import datetime
import credbroker
from credbroker.client import _AttestedToken

hour = 3600.0
now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp()  # the fake clock
fetches = 0
answer = lambda: ("tok-1", now + hour)
def fetch():
    global fetches
    fetches += 1
    return answer()
src = _AttestedToken(fetch, now=lambda: now)
last = ""
def step(what):
    global last
    try:
        got = src.token()
    except credbroker.BrokerError as e:
        got, last = e.code.name, e.message
    print(f"{what}: {got} after {fetches} fetches")

step("first")
# Renewal is due at two thirds of the hour; brokerd answers it with tokens expired on arrival.
now += hour * 2 / 3 + 1
answer = lambda: ("tok-late", now - 1)
step("renewal refused")
step("backing off")
now += 0.2
step("after 200ms")
now += 0.2
step("backing off 400ms")
now += 0.2
step("after 400ms")
answer = lambda: ("tok-2", now + hour)
now += 0.8
step("renewed")
# tok-2 has expired: with no token that may serve, every call fetches once and fails.
now += hour
answer = lambda: ("tok-late", now - 1)
step("no usable token")
step("again")
print("message: " + last.split(";")[0])
`

// TestPythonClient: the Python example searches with a token from the environment; the wrapper's
// results are typed with the raw result a plain dict; refusals carry brokerd's reason (revoked
// token, tool out of scope) and retry delay (rate limit); with no token it fetches one by
// attestation; and it refuses a server whose uid it does not trust, before sending anything.
func TestPythonClient(t *testing.T) {
	py := grpcPython(t)
	e := newEnv(t)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	pyPath := "PYTHONPATH=" + filepath.Join(repoDir, "client", "python")
	example := filepath.Join(repoDir, "client", "python", "examples", "search.py")

	t.Run("example", func(t *testing.T) {
		out, err := e.runClient(t, tok, []string{pyPath}, py, example, "mcp security")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, "1. ") || !strings.Contains(out, "3. ") {
			t.Fatalf("no numbered results:\n%s", out)
		}
		m := lastJSON(t, out)
		raw, _ := m["raw"].(map[string]any)
		if raw["title"] == nil || raw["url"] == nil || m["credits"] == nil {
			t.Fatalf("raw result or credits missing: %v", m)
		}
	})
	t.Run("attested renewal backs off", func(t *testing.T) {
		// As the TypeScript client's (TestTypeScriptClient "attested renewal backs off"): a renewal
		// answered with a token expired on arrival is a failed renewal; the current token keeps
		// serving, and renewal waits 200 ms, then 400 ms, ..., instead of every call fetching
		// again (the clock is fake). The refusal says "already expired", as the Go client's does.
		out, err := e.runClient(t, "", []string{pyPath}, py, "-c", pyAttested)
		want := `first: tok-1 after 1 fetches
renewal refused: tok-1 after 2 fetches
backing off: tok-1 after 2 fetches
after 200ms: tok-1 after 3 fetches
backing off 400ms: tok-1 after 3 fetches
after 400ms: tok-1 after 4 fetches
renewed: tok-2 after 5 fetches
no usable token: FAILED_PRECONDITION after 6 fetches
again: FAILED_PRECONDITION after 7 fetches
message: brokerd issued a token that had already expired when it arrived (expiry 2026-01-01T01:40:01.400000Z)`
		if err != nil || strings.TrimSpace(out) != want {
			t.Fatalf("%v\ngot:\n%s\nwant:\n%s", err, out, want)
		}
	})
	t.Run("typed and plain", func(t *testing.T) {
		out, err := e.runClient(t, tok, []string{pyPath}, py, "-c", pyProbe, "first query")
		m := lastJSON(t, out)
		if err != nil || m["ok"] != true || m["raw_is_dict"] != true || m["position_is_int"] != true || len(m["titles"].([]any)) != 2 {
			t.Fatalf("%v: %v\n%s", err, m, out)
		}
	})
	t.Run("token file", func(t *testing.T) {
		// Unset CREDBROKER_TOKEN; the file starts with a revoked token and gets a good one: the
		// next call reads it again.
		revoked, id := e.mint(t, "web_search")
		e.ctl(t, "", "token", "revoke", id).ok(t)
		file := filepath.Join(e.dir, "py-token")
		if err := os.WriteFile(file, []byte(revoked+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		script := pyProbe + "\n    open(os.environ['TOKEN_FILE'], 'w').write(os.environ['NEXT'])\n    print(json.dumps({'ok': c.search('again').tool}))\n"
		out, err := e.runClient(t, "", []string{pyPath, "TOKEN_FILE=" + file, "NEXT=" + tok}, py, "-c", script, "q")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if err != nil || len(lines) != 2 || !strings.Contains(lines[0], `"TOKEN_REVOKED"`) || lines[1] != `{"ok": "web_search"}` {
			t.Fatalf("token file not re-read: %v\n%s", err, out)
		}
	})
	t.Run("token file not a token", func(t *testing.T) {
		// A FIFO nobody writes to is not waited on (the alarm only turns a hang into a failure); a
		// file far larger than a token is refused, not read whole and sent; a pipe with a writer
		// (a shell's <(…)) is read.
		fifo, big := filepath.Join(e.dir, "py-fifo"), filepath.Join(e.dir, "py-big")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(big, []byte(strings.Repeat("a", 1<<20)), 0o600); err != nil {
			t.Fatal(err)
		}
		code := `
import os, signal, sys, threading, credbroker.client as c
signal.alarm(10)
r, w = os.pipe()
threading.Thread(target=lambda: (os.write(w, b"cbt_from_pipe\n"), os.close(w))).start()
for path in sys.argv[1:] + ["/proc/self/fd/%d" % r]:
    try:
        print("read", c._FileToken(path).token())
    except ValueError as e:
        print("refused:", e)
`
		out, err := e.runClient(t, "", []string{pyPath}, py, "-c", code, fifo, big)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if err != nil || len(lines) != 3 || !strings.Contains(lines[0], "refused: token file "+fifo+" is empty") ||
			!strings.Contains(lines[1], "larger than 4096 bytes") || lines[2] != "read cbt_from_pipe" || strings.Contains(out, "aaaa") {
			t.Fatalf("want the FIFO and the big file refused, saying why, without the contents, and the pipe read: %v\n%s", err, out)
		}
	})
	t.Run("fetched token expired on arrival", func(t *testing.T) {
		// As in the Go client: a fetched token with (almost) no life left, or none at all, is a
		// failed fetch that names its cause, never a token handed out.
		out, err := e.runClient(t, "", []string{pyPath}, py, "-c", `
import time, credbroker.client as c
for tok, exp in [("tok", time.time() - 1), ("tok", 0.0), ("tok", time.time() + 0.001), ("", time.time() + 3600)]:
    try:
        print("accepted", c._AttestedToken(lambda: (tok, exp)).token())
    except c.BrokerError as e:
        print(e.code.name, e)
`)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if err != nil || len(lines) != 4 {
			t.Fatalf("%v\n%s", err, out)
		}
		for i, want := range []string{"FAILED_PRECONDITION", "FAILED_PRECONDITION", "FAILED_PRECONDITION", "INTERNAL"} {
			if !strings.HasPrefix(lines[i], want) || want == "FAILED_PRECONDITION" && !strings.Contains(lines[i], "--ttl") {
				t.Errorf("case %d: want %s (naming --ttl if the ttl is at fault), got %s", i, want, lines[i])
			}
		}
	})
	refusals := []struct {
		name, reason, code string
		token              func(t *testing.T) string
	}{
		{"revoked", "TOKEN_REVOKED", "UNAUTHENTICATED", func(t *testing.T) string {
			tok, id := e.mint(t, "web_search")
			e.ctl(t, "", "token", "revoke", id).ok(t)
			return tok
		}},
		{"out of scope", "TOOL_NOT_IN_SCOPE", "PERMISSION_DENIED", func(t *testing.T) string {
			tok, _ := e.mint(t, "google_search")
			return tok
		}},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			out, err := e.runClient(t, tc.token(t), []string{pyPath}, py, example, "q")
			m := lastJSON(t, out)
			if err == nil || m["error"] != tc.reason || m["code"] != tc.code {
				t.Fatalf("want %s/%s and exit 1, got %v: %v", tc.reason, tc.code, err, m)
			}
		})
	}
	t.Run("retry delay", func(t *testing.T) {
		limited, _ := e.mint(t, "web_search", "--rate", "1/h")
		out, _ := e.runClient(t, limited, []string{pyPath}, py, "-c", pyProbe, "one", "two")
		m := lastJSON(t, out)
		delay, _ := m["retry_delay"].(float64)
		md, _ := m["metadata"].(map[string]any)
		if m["reason"] != "RATE_LIMITED" || m["code"] != "RESOURCE_EXHAUSTED" || delay <= 0 || md["tool"] != "web_search" {
			t.Fatalf("second call within the rate limit: %v\n%s", m, out)
		}
	})
	t.Run("default socket", func(t *testing.T) {
		checkDefaultSocket(t, e, []string{pyPath}, py, "-c", `
import json, sys, credbroker
for c in json.loads(sys.argv[1]):
    print(credbroker.default_socket(c["env"], c["EUID"], c["UID"]))
`)
	})
	t.Run("malformed status details", func(t *testing.T) {
		// Details that are not a google.rpc.Status give no reason, never an exception.
		out, err := e.runClient(t, "", []string{pyPath}, py, "-c", `
from credbroker.client import _status_details
for raw in [b"\xff", b"\x1a\x05\x0a\x03abc", b"\x1a\xff\xff", b""]:
    print(_status_details(raw))
`)
		if err != nil || strings.Count(out, "('', {}, None)") != 4 {
			t.Fatalf("%v\n%s", err, out)
		}
	})
	t.Run("untrusted server", func(t *testing.T) {
		// The real brokerd runs as our uid; trusting only uid 4242 makes it a stranger.
		code := `
import sys, credbroker.client as c
try:
    c.check_server(sys.argv[1], [4242])
except c.UntrustedServerError as e:
    print(e.code.name, e)
`
		out, err := e.runClient(t, "", []string{pyPath}, py, "-c", code, e.socket)
		want := "PERMISSION_DENIED the socket " + e.socket + " is served by uid " + strconv.Itoa(os.Geteuid())
		if err != nil || !strings.HasPrefix(out, want) {
			t.Fatalf("want %q, got %v:\n%s", want, err, out)
		}
		out, err = e.runClient(t, "", []string{pyPath, "CREDBROKER_SERVER_UID=brokerd"}, py, example, "q")
		if err == nil || !strings.Contains(out, "is not a numeric uid") {
			t.Fatalf("a malformed CREDBROKER_SERVER_UID was not refused: %v\n%s", err, out)
		}
	})
	t.Run("attestation", func(t *testing.T) {
		if !peercred.PidfdSupported() {
			t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
		}
		e.ctl(t, "", "workload", "add", "python", "--tools", "web_search", "--uid", strconv.Itoa(os.Getuid())).ok(t)
		out, err := e.runClient(t, "", []string{pyPath}, py, example, "attested")
		if err != nil || !strings.Contains(out, "1. ") {
			t.Fatalf("no token, no attestation: %v\n%s", err, out)
		}
	})
}

// TestTypeScriptClient: the TypeScript wrapper's results carry the raw result as a plain object
// (not protobuf-JSON); refusals carry brokerd's reason and retry delay; the MCP server example,
// driven by the official SDK's client over stdio, answers its `search` tool through brokerd with
// a token from the environment or, with none, by attestation, and puts the reason of a refusal
// first in its tool error.
func TestTypeScriptClient(t *testing.T) {
	dir := tsBuild(t)
	e := newEnv(t)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	wrapper := filepath.Join(dir, "test", "wrapper.js")
	drive := func(t *testing.T, token, query string) map[string]any {
		t.Helper()
		out, err := e.runClient(t, token, nil, "node", filepath.Join(dir, "test", "drive-mcp.js"), filepath.Join(dir, "examples", "mcp-server.js"), query)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return lastJSON(t, out)
	}
	firstText := func(m map[string]any) string {
		content, _ := m["content"].([]any)
		if len(content) == 0 {
			return ""
		}
		c, _ := content[0].(map[string]any)
		s, _ := c["text"].(string)
		return s
	}

	t.Run("wrapper", func(t *testing.T) {
		out, err := e.runClient(t, tok, nil, "node", wrapper, "first query")
		m := lastJSON(t, out)
		raw, _ := m["raw"].(map[string]any)
		if err != nil || m["ok"] != true || m["rawIsPlain"] != true || raw["title"] == nil || len(m["titles"].([]any)) != 2 {
			t.Fatalf("%v: %v\n%s", err, m, out)
		}
		if _, wrapped := raw["fields"]; wrapped {
			t.Fatalf("raw is protobuf-JSON: %v", raw)
		}
	})
	t.Run("default socket", func(t *testing.T) {
		checkDefaultSocket(t, e, nil, "node", "--input-type=module", "-e", `
import { defaultSocket } from "`+filepath.Join(dir, "src", "index.js")+`";
for (const c of JSON.parse(process.argv.at(-1))) console.log(defaultSocket(c.env, c.EUID, c.UID));
`)
	})
	t.Run("token file", func(t *testing.T) {
		file := filepath.Join(e.dir, "ts-token")
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := e.runClient(t, "", []string{"TOKEN_FILE=" + file}, "node", wrapper, "from a file")
		if m := lastJSON(t, out); err != nil || m["ok"] != true {
			t.Fatalf("%v: %v\n%s", err, m, out)
		}
	})
	t.Run("token file not a token", func(t *testing.T) {
		// As in the Go and Python clients: a FIFO nobody writes to is not waited on (the timer
		// only turns a hang into a failure), a file far larger than a token and a device are
		// refused, not read whole and sent, and a pipe with a writer (a shell's <(…)) is read.
		fifo, big := filepath.Join(e.dir, "ts-fifo"), filepath.Join(e.dir, "ts-big")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(big, []byte(strings.Repeat("a", 1<<20)), 0o600); err != nil {
			t.Fatal(err)
		}
		script := `
import { BrokerClient } from "` + filepath.Join(dir, "src", "index.js") + `";
// Not process.exit: Node's exit waits for a libuv thread blocked opening the FIFO.
setTimeout(() => { console.log("hung"); process.kill(process.pid, "SIGKILL"); }, 10000).unref();
for (const tokenFile of process.argv.slice(1)) {
  const c = new BrokerClient({ tokenFile });
  try {
    console.log("read:", (await c.whoAmI()).tokenId !== "");
  } catch (e) {
    console.log("refused:", e.message);
  }
  c.close();
}
`
		// bash hands node the read end of a pipe a printf writes the token into, as
		// --token-file <(pass show …) would.
		out, err := e.runClient(t, "", []string{"SCRIPT=" + script, "PIPE_TOKEN=" + tok}, "bash", "-c",
			`node --input-type=module -e "$SCRIPT" "$@" <(printf '%s\n' "$PIPE_TOKEN")`, "bash", fifo, big, "/dev/zero")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		want := []string{"refused: token file " + fifo + " is empty", "refused: token file " + big + " is larger than 4096 bytes",
			"refused: token file /dev/zero is larger than 4096 bytes", "read: true"}
		if err != nil || len(lines) != len(want) || strings.Contains(out, "aaaa") {
			t.Fatalf("want %d lines, without the file's contents: %v\n%s", len(want), err, out)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("line %d: got %q, want it to start %q", i, lines[i], w)
			}
		}
	})
	t.Run("fetched token expired on arrival", func(t *testing.T) {
		// As in the Go client: a fetched token with (almost) no life left, with no expiry, or
		// empty, is a failed fetch that names its cause, after one FetchToken and before any
		// call carries it; not a token handed out, refused, fetched again.
		out, err := e.runClient(t, "", nil, "node", filepath.Join(dir, "test", "fake-fetch.js"), filepath.Join(e.dir, "fake-fetch.sock"))
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		wantCodes := []string{"FAILED_PRECONDITION", "FAILED_PRECONDITION", "FAILED_PRECONDITION", "INTERNAL"}
		if len(lines) != len(wantCodes) {
			t.Fatalf("want %d cases:\n%s", len(wantCodes), out)
		}
		for i, line := range lines {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			if m["code"] != wantCodes[i] || m["fetches"] != 1.0 || m["searches"] != 0.0 ||
				wantCodes[i] == "FAILED_PRECONDITION" && !strings.Contains(fmt.Sprint(m["message"]), "--ttl") {
				t.Errorf("want %s (naming --ttl if the ttl is at fault) after one fetch and no search; got %v", wantCodes[i], m)
			}
		}
		// The same from the real brokerd, with a registration whose ttl is too short to use.
		if !peercred.PidfdSupported() {
			t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
		}
		e.ctl(t, "", "workload", "add", "node-1ms", "--tools", "web_search", "--uid", strconv.Itoa(os.Getuid()), "--ttl", "1ms").ok(t)
		defer func() { e.ctl(t, "", "workload", "remove", "node-1ms").ok(t) }()
		script := strings.Replace(tsSearchOnce, "INDEX", filepath.Join(dir, "src", "index.js"), 1)
		out, err = e.runClient(t, "", nil, "node", "--input-type=module", "-e", script, e.socket)
		if m := lastJSON(t, out); err != nil || m["code"] != "FAILED_PRECONDITION" || !strings.Contains(fmt.Sprint(m["message"]), "--ttl") {
			t.Fatalf("with a 1ms ttl: want FAILED_PRECONDITION naming --ttl; got %v %v\n%s", err, m, out)
		}
	})
	t.Run("attested renewal backs off", func(t *testing.T) {
		// A renewal answered with a token expired on arrival is a failed renewal: the current
		// token keeps serving, and renewal waits 200 ms, then 400 ms, ..., instead of every call
		// fetching again (the driver's clock is fake).
		out, err := e.runClient(t, "", nil, "node", filepath.Join(dir, "test", "attested.js"))
		want := `first: tok-1 after 1 fetches
renewal refused: tok-1 after 2 fetches
backing off: tok-1 after 2 fetches
after 200ms: tok-1 after 3 fetches
backing off 400ms: tok-1 after 3 fetches
after 400ms: tok-1 after 4 fetches
renewed: tok-2 after 5 fetches
no usable token: FAILED_PRECONDITION after 6 fetches
again: FAILED_PRECONDITION after 7 fetches`
		if err != nil || strings.TrimSpace(out) != want {
			t.Fatalf("%v\ngot:\n%s\nwant:\n%s", err, out, want)
		}
	})
	t.Run("retry delay", func(t *testing.T) {
		limited, _ := e.mint(t, "web_search", "--rate", "1/h")
		out, _ := e.runClient(t, limited, nil, "node", wrapper, "one", "two")
		m := lastJSON(t, out)
		delay, _ := m["retryDelayMs"].(float64)
		md, _ := m["metadata"].(map[string]any)
		if m["reason"] != "RATE_LIMITED" || m["code"] != "RESOURCE_EXHAUSTED" || delay <= 0 || md["tool"] != "web_search" {
			t.Fatalf("second call within the rate limit: %v\n%s", m, out)
		}
	})
	t.Run("mcp example", func(t *testing.T) {
		m := drive(t, tok, "mcp security")
		tools, _ := m["tools"].([]any)
		structured, _ := m["structured"].(map[string]any)
		results, _ := structured["results"].([]any)
		if len(tools) != 1 || tools[0] != "search" || m["isError"] != false || !strings.HasPrefix(firstText(m), "1. ") || len(results) != 3 {
			t.Fatalf("search tool: %v", m)
		}
	})
	t.Run("mcp example refusals", func(t *testing.T) {
		revoked, id := e.mint(t, "web_search")
		e.ctl(t, "", "token", "revoke", id).ok(t)
		scoped, _ := e.mint(t, "google_search")
		for tok, reason := range map[string]string{revoked: "TOKEN_REVOKED: ", scoped: "TOOL_NOT_IN_SCOPE: "} {
			m := drive(t, tok, "q")
			if m["isError"] != true || !strings.HasPrefix(firstText(m), reason) {
				t.Fatalf("want a tool error starting %q, got %v", reason, m)
			}
		}
	})
	t.Run("untrusted server", func(t *testing.T) { testTypeScriptUntrustedServer(t, e, dir, tok) })
	t.Run("mcp example attestation", func(t *testing.T) {
		if !peercred.PidfdSupported() {
			t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
		}
		e.ctl(t, "", "workload", "add", "node", "--tools", "web_search", "--uid", strconv.Itoa(os.Getuid())).ok(t)
		// Not `defer e.ctl(...).ok(t)`: that would run the removal now and defer only ok.
		defer func() { e.ctl(t, "", "workload", "remove", "node").ok(t) }()
		m := drive(t, "", "attested")
		if m["isError"] != false || !strings.HasPrefix(firstText(m), "1. ") {
			t.Fatalf("no token, no attestation: %v", m)
		}
	})
}

// squatter listens on a Unix socket at path, as someone squatting on brokerd's path would, and
// records what clients send it: the first bytes of each connection (gRPC's HTTP/2 preface is 24),
// then it closes the connection.
type squatter struct {
	lis  net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	got  []byte
	path string
}

func newSquatter(t *testing.T, path string) *squatter {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &squatter{lis: lis, path: path}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				buf := make([]byte, 24)
				n, _ := io.ReadFull(c, buf)
				s.mu.Lock()
				s.got = append(s.got, buf[:n]...)
				s.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

// received stops the squatter and returns everything clients sent it.
func (s *squatter) received() []byte {
	s.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}

func (s *squatter) close() {
	s.lis.Close()
	s.wg.Wait()
}

// tsSearchOnce searches once through BrokerClient on socket (token from the environment) and
// prints the outcome as JSON: {"ok": true} or the error's name, code and message.
const tsSearchOnce = `
import { BrokerClient } from "INDEX";
const socket = process.argv.at(-1);
try {
  const c = new BrokerClient({ socket, timeoutMs: 10000 });
  try {
    await c.search("q");
    console.log(JSON.stringify({ ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ name: e.name, code: e.codeName, message: e.message }));
  }
  c.close();
} catch (e) {
  console.log(JSON.stringify({ name: e.name, message: e.message }));
}
`

// testTypeScriptUntrustedServer: the TypeScript client refuses, before it writes a byte, a socket
// another uid could be serving — owned by that uid, behind that uid's symbolic link, or in a
// directory others may write without the sticky bit — with UntrustedServerError
// (PERMISSION_DENIED) saying what to set; $CREDBROKER_SERVER_UID lets that uid in; a malformed one
// is an error. Node cannot read SO_PEERCRED, so the check is on the files (checkServer).
func testTypeScriptUntrustedServer(t *testing.T, e *env, dir, tok string) {
	script := strings.Replace(tsSearchOnce, "INDEX", filepath.Join(dir, "src", "index.js"), 1)
	search := func(t *testing.T, socket string, extraEnv ...string) map[string]any {
		t.Helper()
		out, err := e.runClient(t, tok, extraEnv, "node", "--input-type=module", "-e", script, socket)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return lastJSON(t, out)
	}
	refused := func(t *testing.T, m map[string]any, sq *squatter, want string) {
		t.Helper()
		if m["name"] != "UntrustedServerError" || m["code"] != "PERMISSION_DENIED" || !strings.Contains(fmt.Sprint(m["message"]), want) {
			t.Errorf("want UntrustedServerError, PERMISSION_DENIED, %q; got %v", want, m)
		}
		if got := sq.received(); len(got) != 0 {
			t.Errorf("the client sent %q to a server it does not trust", got)
		}
	}
	const other = 65534

	t.Run("trusted", func(t *testing.T) {
		// The real brokerd (our uid, in a directory of ours) passes the same check.
		if m := search(t, e.socket); m["ok"] != true {
			t.Fatalf("search through the checked connection: %v", m)
		}
	})
	t.Run("writable directory", func(t *testing.T) {
		d := filepath.Join(e.dir, "open")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil { // no sticky bit: anyone may rename into it
			t.Fatal(err)
		}
		sq := newSquatter(t, filepath.Join(d, "b.sock"))
		refused(t, search(t, sq.path), sq, "which group or others may write without the sticky bit")
	})
	t.Run("owned by another uid", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give the socket to another uid (CI runs as root)")
		}
		sq := newSquatter(t, filepath.Join(e.dir, "squat.sock"))
		if err := os.Chown(sq.path, other, other); err != nil {
			t.Fatal(err)
		}
		refused(t, search(t, sq.path), sq, fmt.Sprintf("is owned by uid %d, not root, your uid 0 or $CREDBROKER_SERVER_UID; refusing to send a token or request (if that uid is brokerd's, set CREDBROKER_SERVER_UID=%[1]d)", other))
		// Trusted by $CREDBROKER_SERVER_UID, the same socket gets the connection: the check, not
		// something else, is what kept the bytes back.
		sq = newSquatter(t, filepath.Join(e.dir, "squat2.sock"))
		if err := os.Chown(sq.path, other, other); err != nil {
			t.Fatal(err)
		}
		m := search(t, sq.path, "CREDBROKER_SERVER_UID=4242, "+strconv.Itoa(other))
		if got := sq.received(); !strings.HasPrefix(string(got), "PRI * HTTP/2.0") {
			t.Fatalf("trusted by CREDBROKER_SERVER_UID, the client sent %q (outcome %v), want gRPC's preface", got, m)
		}
	})
	t.Run("symbolic link of another uid", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give the link to another uid (CI runs as root)")
		}
		link := filepath.Join(e.dir, "link.sock")
		if err := os.Symlink(e.socket, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(link, other, other); err != nil {
			t.Fatal(err)
		}
		m := search(t, link)
		if m["name"] != "UntrustedServerError" || !strings.Contains(fmt.Sprint(m["message"]), "a symbolic link owned by uid 65534") {
			t.Errorf("want UntrustedServerError naming the link; got %v", m)
		}
	})
	t.Run("malformed CREDBROKER_SERVER_UID", func(t *testing.T) {
		m := search(t, e.socket, "CREDBROKER_SERVER_UID=credbroker")
		if !strings.Contains(fmt.Sprint(m["message"]), `"credbroker" is not a numeric uid`) {
			t.Errorf("a malformed CREDBROKER_SERVER_UID was not refused: %v", m)
		}
	})
}

// TestReadmeClientExamples: the README shows the Python and TypeScript examples exactly as the
// files TestPythonClient and TestTypeScriptClient run.
func TestReadmeClientExamples(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"client/python/examples/search.py", "client/typescript/examples/mcp-server.ts"} {
		src, err := os.ReadFile(filepath.Join(repoDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), "\n"+string(src)+"```\n") {
			t.Errorf("README.md does not show %s as it is; copy it into its code block", f)
		}
	}
}

// defaultSocketCases are client.DefaultSocket's rules (client/socket_test.go), which the Python and
// TypeScript clients must follow too, so that all three find the same brokerd.
var defaultSocketCases = []struct {
	Env       map[string]string `json:"env"`
	EUID, UID int
	Want      string `json:"want"`
}{
	{map[string]string{"CREDBROKER_SOCKET": "/x/s.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, 1000, "/x/s.sock"},
	{map[string]string{"RUNTIME_DIRECTORY": "/run/credbroker:/run/other"}, 0, 0, "/run/credbroker/broker.sock"},
	{map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, 0, "/run/credbroker/broker.sock"},
	{map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, 1000, "/run/user/1000/credbroker/broker.sock"},
	{map[string]string{}, 1000, 1001, "/run/user/1001/credbroker/broker.sock"},
}

// checkDefaultSocket runs a program that prints one default socket path per line for the JSON
// list of cases it gets as its last argument, and compares them with the Go client's rules.
func checkDefaultSocket(t *testing.T, e *env, extraEnv []string, name string, args ...string) {
	t.Helper()
	cases, err := json.Marshal(defaultSocketCases)
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.runClient(t, "", extraEnv, name, append(args, string(cases))...)
	got := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(got) != len(defaultSocketCases) {
		t.Fatalf("%v\n%s", err, out)
	}
	for i, tc := range defaultSocketCases {
		if got[i] != tc.Want {
			t.Errorf("env %v euid %d uid %d: %s, want %s (as the Go client)", tc.Env, tc.EUID, tc.UID, got[i], tc.Want)
		}
	}
}
