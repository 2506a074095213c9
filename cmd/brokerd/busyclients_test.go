package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/sockettest"
)

// fullQueue is a socket, proxied to brokerd's, whose accept queue is full and which accepts
// nothing until serve is called: what a local user connecting and closing in a loop leaves a
// client to connect to (client/busy_test.go TestDialWaitsForAFullAcceptQueue for the Go client).
type fullQueue struct {
	path  string
	serve func()
}

func newFullQueue(t *testing.T, e *env) fullQueue {
	t.Helper()
	path, lis, fillers := sockettest.FullQueue(t)
	var (
		mu    sync.Mutex
		conns = fillers
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	var once sync.Once
	serve := func() {
		once.Do(func() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					c, err := lis.Accept()
					if err != nil {
						return
					}
					b, err := net.Dial("unix", e.socket)
					if err != nil {
						c.Close()
						continue
					}
					track(c)
					track(b)
					wg.Add(2)
					go func() { defer wg.Done(); io.Copy(b, c); b.Close() }()
					go func() { defer wg.Done(); io.Copy(c, b); c.Close() }()
				}
			}()
		})
	}
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return fullQueue{path: path, serve: serve}
}

// runBusyClient runs a client that prints "busy" when its connect found the accept queue full
// (the clients' test hook); q starts accepting then. It returns the client's other output.
func (e *env) runBusyClient(t *testing.T, q fullQueue, token string, extraEnv []string, name string, args ...string) (string, error) {
	t.Helper()
	// A safety net for a client that waits for ever (the Python client's blocking connect did);
	// the clients' own deadline is 10 s.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDBROKER_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(append(env, "CREDBROKER_SOCKET="+q.path, "CREDBROKER_TOKEN="+token), extraEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if sc.Text() == "busy" {
			q.serve()
			continue
		}
		out.WriteString(sc.Text() + "\n")
	}
	err = cmd.Wait()
	out.WriteString(stderr.String())
	return out.String(), err
}

// TestPythonClientFullAcceptQueue: a connect that finds brokerd's accept queue full (a local user
// connecting and closing in a loop, no token needed) fails at once with EAGAIN; the Python client
// waits its turn until the deadline instead. Its own connect (the server check) used to block with
// no deadline at all, and grpcio's fails the call at once.
func TestPythonClientFullAcceptQueue(t *testing.T) {
	py := grpcPython(t)
	e := newEnv(t)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	q := newFullQueue(t, e)
	script := "import credbroker.client\ncredbroker.client._on_busy = lambda: print('busy', flush=True)\n" + pyProbe
	pyPath := "PYTHONPATH=" + filepath.Join(repoDir, "client", "python")
	out, err := e.runBusyClient(t, q, tok, []string{pyPath}, py, "-c", script, "through a full queue")
	if err != nil {
		t.Fatalf("search through a full accept queue: %v\n%s", err, out)
	}
	if m := lastJSON(t, out); m["ok"] != true {
		t.Fatalf("search through a full accept queue: %v\n%s", m, out)
	}

	// A queue that stays full until the deadline: UNAVAILABLE, saying brokerd is running and why.
	stuck := newFullQueue(t, e)
	out, _ = e.runClient(t, tok, []string{pyPath, "CREDBROKER_SOCKET=" + stuck.path}, py, "-c", `
import json, credbroker
try:
    credbroker.Client(timeout=0.3).search("q")
    print(json.dumps({"ok": True}))
except credbroker.BrokerError as e:
    print(json.dumps({"code": e.code.name, "message": e.message}))
`)
	if m := lastJSON(t, out); m["code"] != "UNAVAILABLE" || !strings.Contains(fmt.Sprint(m["message"]), "queue of new connections stayed full") {
		t.Fatalf("a queue full until the deadline: want UNAVAILABLE saying so, got %v\n%s", m, out)
	}
}

// TestTypeScriptClientFullAcceptQueue: the same for the TypeScript client, whose grpc-js connect
// failed the call at once with EAGAIN ("cannot reach brokerd ...: is it running?").
func TestTypeScriptClientFullAcceptQueue(t *testing.T) {
	dir := tsBuild(t)
	e := newEnv(t)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	q := newFullQueue(t, e)
	script := strings.Replace(tsSearchOnce, `import { BrokerClient } from "INDEX";`,
		`import { BrokerClient, testHooks } from "INDEX";
testHooks.onBusy = () => console.log("busy");`, 1)
	script = strings.Replace(script, "INDEX", filepath.Join(dir, "src", "index.js"), 1)
	out, err := e.runBusyClient(t, q, tok, nil, "node", "--input-type=module", "-e", script, q.path)
	if err != nil {
		t.Fatalf("search through a full accept queue: %v\n%s", err, out)
	}
	if m := lastJSON(t, out); m["ok"] != true {
		t.Fatalf("search through a full accept queue: %v\n%s", m, out)
	}

	// A queue that stays full until the deadline: UNAVAILABLE, saying brokerd is running and why.
	stuck := newFullQueue(t, e)
	script = strings.Replace(script, "timeoutMs: 10000", "timeoutMs: 300", 1)
	out, _ = e.runClient(t, tok, nil, "node", "--input-type=module", "-e", script, stuck.path)
	if m := lastJSON(t, out); m["code"] != "UNAVAILABLE" || !strings.Contains(fmt.Sprint(m["message"]), "queue of new connections stayed full") {
		t.Fatalf("a queue full until the deadline: want UNAVAILABLE saying so, got %v\n%s", m, out)
	}
}
