package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

var httpFrontAddrRE = regexp.MustCompile(`HTTP front on loopback TCP.* addr=http://(127\.0\.0\.1:\d+)`)

// brokerd --http-listen serves Scavio's REST surface on a Unix socket (mode 0660, like the gRPC
// one) and on loopback TCP: an unchanged Scavio request with a broker token as its API key gets
// Scavio's answer; the raw key is refused before the upstream; the socket goes at shutdown.
func TestHTTPFrontProcess(t *testing.T) {
	e := newEnv(t)
	httpSock := filepath.Join(e.dir, "run", "http.sock")
	e.startDaemon(t, "--http-listen", "unix:"+httpSock, "--http-listen", "127.0.0.1:0")
	tok, _ := e.setup(t)
	fi, err := os.Stat(httpSock)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("HTTP socket: %v %v", fi.Mode(), err)
	}
	var tcpBase string
	deadline := time.Now().Add(10 * time.Second)
	for tcpBase == "" && time.Now().Before(deadline) {
		if m := httpFrontAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			tcpBase = "http://" + m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	if tcpBase == "" {
		t.Fatalf("brokerd did not log its HTTP address:\n%s", e.stderr.String())
	}
	unixClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", httpSock)
	}}}
	defer unixClient.CloseIdleConnections()
	do := func(c *http.Client, base, path, hdr, val, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(hdr, val)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(raw), itKey) {
			t.Fatal("the key is in an answer")
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%d: not JSON: %s", resp.StatusCode, raw)
		}
		return resp.StatusCode, m
	}
	for _, via := range []struct {
		c    *http.Client
		base string
	}{{unixClient, "http://brokerd"}, {http.DefaultClient, tcpBase}} {
		if code, m := do(via.c, via.base, scaviotest.SearchPath, "x-api-key", tok, `{"query": "MCP server security", "num_results": 5}`); code != 200 || len(m["results"].([]any)) != 5 {
			t.Fatalf("%s search: %d %v", via.base, code, m)
		}
		if code, m := do(via.c, via.base, scaviotest.GooglePath, "Authorization", "Bearer "+tok, `{"query": "credential brokers"}`); code != 200 || m["results"] == nil {
			t.Fatalf("%s google: %d %v", via.base, code, m)
		}
	}
	before := e.fake.Count()
	code, m := do(unixClient, "http://brokerd", scaviotest.SearchPath, "x-api-key", itKey, `{"query": "q"}`)
	if errObj, _ := m["error"].(map[string]any); code != 401 || errObj["reason"] != "RAW_KEY_PRESENTED" {
		t.Fatalf("raw key: %d %v", code, m)
	}
	if e.fake.Count() != before {
		t.Fatal("a raw key reached the upstream")
	}
	audit := e.ctl(t, "", "audit", "--json").ok(t).stdout
	if !strings.Contains(audit, "raw-key-presented") || !strings.Contains(audit, "POST /api/v1/google") {
		t.Fatalf("audit lacks the HTTP calls: %s", audit)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(httpSock); !os.IsNotExist(err) {
		t.Fatalf("HTTP socket left behind: %v", err)
	}
	e.assertNoLeak(t, itKey, tok)
}

// Anything but unix:/PATH or a loopback address is refused at start, with a clear message.
func TestHTTPListenRefusesNonLoopback(t *testing.T) {
	e := newEnv(t)
	for _, addr := range []string{"0.0.0.0:8080", "192.0.2.1:80", "unix:relative.sock", "example.com:80"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := e.daemonCmd("--http-listen", addr)
		cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "--http-listen") {
			t.Fatalf("--http-listen %s: err %v, output %s", addr, err, out)
		}
	}
}

// Over loopback TCP brokerd tells callers apart by the kernel's socket table: a token bound to
// uid 65534 works for a client running as 65534 and is refused to root's client.
func TestHTTPFrontTCPKnowsTheCallersUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534 (CI runs as root)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl as an unrelated HTTP client")
	}
	e := newEnv(t)
	e.startDaemon(t, "--http-listen", "127.0.0.1:0")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	tok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search", "--bind-uid", "65534").ok(t).stdout)
	var base string
	deadline := time.Now().Add(10 * time.Second)
	for base == "" && time.Now().Before(deadline) {
		if m := httpFrontAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			base = "http://" + m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	run := func(uid uint32) string {
		t.Helper()
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base+scaviotest.SearchPath,
			"-H", "x-api-key: "+tok, "-H", "Content-Type: application/json", "-d", `{"query": "q"}`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl as %d: %v", uid, err)
		}
		return string(out)
	}
	if got := run(nobody); got != "200" {
		t.Fatalf("uid 65534 with its own bound token: HTTP %s", got)
	}
	if got := run(0); got != "401" {
		t.Fatalf("root with a token bound to 65534: HTTP %s", got)
	}
}
