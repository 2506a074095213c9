package main

// Process-level tests of brokerd as a systemd service: sd_notify (READY/STATUS/WATCHDOG/RELOADING/
// STOPPING) against a fake NOTIFY_SOCKET, socket activation with an inherited listener, SIGTERM
// while a slow upstream call is in flight, SIGHUP with good and bad master keysets, the /metrics
// endpoint, and the unit files themselves (systemd-analyze).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/daemon"
	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cleanEnv is the test's environment without anything systemd might have set for the test run
// itself, so brokerd only sees what each test passes.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
			"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// startDaemonEnv is startDaemon with extra environment.
func (e *env) startDaemonEnv(t *testing.T, extraEnv []string, extra ...string) {
	t.Helper()
	cmd := e.daemonCmd(extra...)
	cmd.Env = append(cleanEnv(), extraEnv...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
}

// notifySocket is a fake systemd notification socket: every datagram brokerd sends, split into
// its newline-separated assignments.
type notifySocket struct {
	path string
	msgs chan []string
}

func newNotifySocket(t *testing.T, dir string) *notifySocket {
	t.Helper()
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{path: path, msgs: make(chan []string, 1000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- strings.Split(strings.TrimSpace(string(buf[:k])), "\n")
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return n
}

// waitFor returns the next datagram holding the assignment want, failing after timeout. Datagrams
// before it are passed to skipped, if set.
func (n *notifySocket) waitFor(t *testing.T, want string, timeout time.Duration, skipped func([]string)) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case msg, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %s", want)
			}
			if has(msg, want) {
				return msg
			}
			if skipped != nil {
				skipped(msg)
			}
		case <-deadline:
			t.Fatalf("no %s notification within %s", want, timeout)
		}
	}
}

func has(msg []string, want string) bool {
	for _, l := range msg {
		if l == want {
			return true
		}
	}
	return false
}

func value(msg []string, name string) string {
	for _, l := range msg {
		if v, ok := strings.CutPrefix(l, name+"="); ok {
			return v
		}
	}
	return ""
}

func TestSystemdNotify(t *testing.T) {
	e := newEnv(t)
	n := newNotifySocket(t, e.dir)
	cmd := e.daemonCmd()
	// WATCHDOG_USEC=400ms: brokerd must ping every 200ms, each after a passing health check.
	// WATCHDOG_PID is optional (it must name brokerd, whose pid is unknown before Start).
	cmd.Env = append(cleanEnv(), "NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=400000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd

	ready := n.waitFor(t, "READY=1", 15*time.Second, func(msg []string) {
		t.Errorf("notification before READY=1: %q", msg)
	})
	// READY=1 comes only once the socket answers: a health check right now must pass.
	if !healthy(e.socket) {
		t.Fatal("READY=1 was sent before the socket served health checks")
	}
	st := value(ready, "STATUS")
	if !strings.Contains(st, "serving on "+e.socket) || !strings.Contains(st, "0 tokens") || !strings.Contains(st, "0 credentials due") {
		t.Fatalf("STATUS with READY=1: %q", st)
	}

	// brokerctl health: exit 0 and SERVING for the server and each service, exit 1 otherwise.
	if r := e.ctl(t, "", "health").ok(t); strings.TrimSpace(r.stdout) != "SERVING" {
		t.Fatalf("brokerctl health: %q", r.stdout)
	}
	e.ctl(t, "", "health", "--service", "credbroker.v1.SearchService").ok(t)
	e.ctl(t, "", "health", "--service", "no.such.Service").fails(t, `is not healthy: it has no service "no.such.Service"`)

	// The STATUS line follows the token count.
	e.setup(t)
	var pings int
	var last []string
	for pings < 3 {
		last = n.waitFor(t, "WATCHDOG=1", 5*time.Second, nil)
		pings++
	}
	if st := value(last, "STATUS"); !strings.Contains(st, "1 tokens") {
		t.Fatalf("STATUS with WATCHDOG=1 after minting a token: %q", st)
	}

	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopping := n.waitFor(t, "STOPPING=1", 10*time.Second, nil)
	if !strings.Contains(value(stopping, "STATUS"), "stopping") {
		t.Fatalf("STOPPING=1 without a stopping STATUS: %q", stopping)
	}
	if err := e.daemon.Wait(); err != nil {
		t.Fatalf("SIGTERM: exit %v; log:\n%s", err, e.stderr.String())
	}
}

// Without WATCHDOG_USEC there are no watchdog pings, and nothing else is sent after READY=1 until
// shutdown.
func TestSystemdNoWatchdogWithoutUsec(t *testing.T) {
	e := newEnv(t)
	n := newNotifySocket(t, e.dir)
	e.startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + n.path})
	n.waitFor(t, "READY=1", 15*time.Second, nil)
	select {
	case msg := <-n.msgs:
		t.Fatalf("unexpected notification without WATCHDOG_USEC: %q", msg)
	case <-time.After(500 * time.Millisecond):
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// Under systemd, with no path flags, brokerd finds everything in the directories systemd passes:
// the db in $STATE_DIRECTORY, the socket in $RUNTIME_DIRECTORY, the keyset in
// $CREDENTIALS_DIRECTORY/master-keyset.
func TestSystemdDirectoryDefaults(t *testing.T) {
	e := newEnv(t)
	state, runtime, creds := filepath.Join(e.dir, "state"), filepath.Join(e.dir, "rt"), filepath.Join(e.dir, "creds")
	for _, d := range []string{state, runtime, creds} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, e.keyset, filepath.Join(creds, "master-keyset"))
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--upstream-url", e.fake.URL)
	cmd.Env = append(cleanEnv(), "STATE_DIRECTORY="+state, "RUNTIME_DIRECTORY="+runtime, "CREDENTIALS_DIRECTORY="+creds, "CREDBROKER_SOCKET=", "CREDBROKER_DB=", "CREDBROKER_MASTER_KEYSET=")
	e.stderr = &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.socket = filepath.Join(runtime, "broker.sock")
	e.db = filepath.Join(state, "broker.db")
	e.waitHealthy(t)
	e.setup(t)
	if _, err := os.Stat(e.db); err != nil {
		t.Fatalf("no database in $STATE_DIRECTORY: %v", err)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

// Socket activation: brokerd serves on the inherited fd 3, leaves the socket file alone when it
// exits, and a restarted brokerd serves on the same socket. LISTEN_PID must be brokerd's own pid,
// so the child sets it in a shell that then execs brokerd (same pid).
func TestSocketActivation(t *testing.T) {
	e := newEnv(t)
	if err := os.MkdirAll(filepath.Dir(e.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	// The test plays systemd: it owns the listening socket for the whole test.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); l.Close() })

	start := func() {
		t.Helper()
		args := []string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, filepath.Join(binDir, "brokerd"),
			"--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL}
		cmd := exec.Command("/bin/sh", args...)
		cmd.Env = append(cleanEnv(), "LISTEN_FDS=1", "LISTEN_FDNAMES=credbroker.socket")
		cmd.ExtraFiles = []*os.File{f} // fd 3
		e.stderr = &logtest.Buffer{}
		cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		e.daemon = cmd
		e.waitHealthy(t)
		if !strings.Contains(e.stderr.String(), "socket activation") {
			t.Fatalf("brokerd did not use the passed socket:\n%s", e.stderr.String())
		}
	}

	start()
	token, _ := e.setup(t)
	e.search(t, token, "activated").ok(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, e.stderr.String())
	}
	fi, err := os.Lstat(e.socket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("brokerd removed the socket systemd owns: %v", err)
	}
	// The socket still accepts connections (they queue for the next brokerd).
	c, err := net.DialTimeout("unix", e.socket, time.Second)
	if err != nil {
		t.Fatalf("socket dead after brokerd stopped: %v", err)
	}
	c.Close()

	start()
	r := e.search(t, token, "after restart").ok(t)
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("search after an activated restart: %s", r.stdout)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.socket); err != nil {
		t.Fatalf("socket gone after the second stop: %v", err)
	}
}

// Socket activation with a socket brokerd cannot serve on: a Unix datagram or seqpacket socket
// (ListenDatagram=, ListenSequentialPacket=), a stream socket that is not listening (what
// Accept=yes passes), a TCP socket. brokerd refuses at once and names the unit setting to fix;
// it used to take the first three as listeners, then wait 10 s for a health check that could not
// connect and fail with "does not answer health checks".
func TestSocketActivationRefusesOtherSockets(t *testing.T) {
	for _, tc := range []struct {
		name string
		sock func(t *testing.T, path string) *os.File
		want string
	}{
		{"unix datagram", func(t *testing.T, path string) *os.File {
			c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			f, err := c.File()
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, "is a datagram socket"},
		{"unix seqpacket", func(t *testing.T, path string) *os.File {
			l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			f, err := l.File()
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, "is a seqpacket socket"},
		{"unix stream, not listening", func(t *testing.T, path string) *os.File {
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
				syscall.Close(fd)
				t.Fatal(err)
			}
			return os.NewFile(uintptr(fd), path)
		}, "is not listening"},
		{"tcp", func(t *testing.T, _ string) *os.File {
			l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			f, err := l.File()
			if err != nil {
				t.Fatal(err)
			}
			return f
		}, "brokerd serves only on a Unix socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := os.MkdirAll(filepath.Dir(e.socket), 0o755); err != nil {
				t.Fatal(err)
			}
			f := tc.sock(t, e.socket)
			t.Cleanup(func() { f.Close() })
			args := []string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, filepath.Join(binDir, "brokerd"),
				"--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL}
			cmd := exec.Command("/bin/sh", args...)
			cmd.Env = append(cleanEnv(), "LISTEN_FDS=1", "LISTEN_FDNAMES=credbroker.socket")
			cmd.ExtraFiles = []*os.File{f} // fd 3
			out := &logtest.Buffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			e.daemon = cmd
			err := cmd.Wait()
			if err == nil {
				t.Fatalf("brokerd exited 0 with a %s socket:\n%s", tc.name, out.String())
			}
			for _, want := range []string{"socket activation", tc.want, "ListenStream="} {
				if !strings.Contains(out.String(), want) {
					t.Fatalf("brokerd's error does not say %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// Socket activation through a wrapper that starts brokerd as its child instead of exec'ing it:
// LISTEN_PID names the wrapper, so brokerd may not take the passed socket and creates its own at
// --socket, where systemd's is live. It used to say "another brokerd is serving on it", sending
// the operator after a second brokerd that does not exist; it names the wrapper's pid and the fix.
func TestSocketActivationThroughAWrapperThatDoesNotExec(t *testing.T) {
	e := newEnv(t)
	if err := os.MkdirAll(filepath.Dir(e.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	// The test plays systemd: it owns the listening socket.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: e.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); l.Close() })
	// No exec: "; exit" keeps the shell from running its last command in its own place.
	args := []string{"-c", `LISTEN_PID=$$ "$0" "$@"; exit $?`, filepath.Join(binDir, "brokerd"),
		"--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL}
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(cleanEnv(), "LISTEN_FDS=1", "LISTEN_FDNAMES=credbroker.socket")
	cmd.ExtraFiles = []*os.File{f} // fd 3
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	if err := cmd.Wait(); err == nil {
		t.Fatalf("brokerd exited 0 beside a live socket:\n%s", out.String())
	}
	for _, want := range []string{
		fmt.Sprintf("LISTEN_FDS was set for pid %d, not brokerd's pid", cmd.Process.Pid),
		"wrapper that does not exec it",
		"exec brokerd",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("brokerd's error does not say %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "another brokerd") {
		t.Errorf("brokerd blames another brokerd:\n%s", out.String())
	}
}

// SIGTERM while a slow upstream call is in flight: health goes NOT_SERVING and new calls are
// refused at once, the in-flight call still completes, and brokerd exits 0.
func TestSIGTERMDrainsInFlightCall(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	token, _ := e.setup(t)

	// 5 s: well past the checks below even on a loaded machine, well within the 10 s timeout.
	e.fake.SetFault(scaviotest.Fault{Delay: 5 * time.Second, Times: 1})
	before := e.fake.Count()
	inflight := make(chan result, 1)
	go func() { inflight <- e.search(t, token, "slow query") }()
	waitUntil(t, 10*time.Second, "the slow call reached the upstream", func() bool { return e.fake.Count() > before })

	sent := time.Now()
	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 1500*time.Millisecond, "health stopped answering SERVING", func() bool { return !healthy(e.socket) })
	e.search(t, token, "a new call during the drain").fails(t, "")
	e.ctl(t, "", "health").fails(t, "brokerd at "+e.socket)
	select {
	case r := <-inflight:
		t.Fatalf("the in-flight call ended before its upstream answered: %+v", r)
	default:
	}

	r := <-inflight
	if r.err != nil || !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("in-flight call after SIGTERM: %v\n%s\n%s", r.err, r.stdout, r.stderr)
	}
	done := make(chan error, 1)
	go func() { done <- e.daemon.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after drain: %v\n%s", err, e.stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("brokerd did not exit after the drain")
	}
	if took := time.Since(sent); took > 10*time.Second {
		t.Fatalf("drain took %s, longer than --shutdown-timeout", took)
	}
	e.ctl(t, "", "health").fails(t, "not healthy: cannot reach brokerd at "+e.socket+": is it running?")
	if !strings.Contains(e.stderr.String(), "draining in-flight calls") {
		t.Fatalf("no drain log line:\n%s", e.stderr.String())
	}
}

// A call still running at the shutdown timeout (a hung upstream) gets a clean "brokerd is
// shutting down" from brokerd, not a transport error, and is audited (issue 16 §5).
func TestShutdownTimeoutEndsCallsCleanly(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--shutdown-timeout", "1s")
	token, _ := e.setup(t)

	e.fake.SetFault(scaviotest.Fault{Delay: time.Hour, Times: 1}) // hung: answers only when cancelled
	before := e.fake.Count()
	inflight := make(chan result, 1)
	go func() { inflight <- e.search(t, token, "hung query") }()
	waitUntil(t, 10*time.Second, "the hung call reached the upstream", func() bool { return e.fake.Count() > before })
	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-inflight
	if r.err == nil || !strings.Contains(r.stderr, "brokerd is shutting down") {
		t.Fatalf("in-flight call at the shutdown timeout: err=%v\nstdout=%s\nstderr=%s", r.err, r.stdout, r.stderr)
	}
	if err := e.daemon.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, e.stderr.String())
	}
	if !strings.Contains(e.stderr.String(), "ending the remaining calls with Unavailable") {
		t.Fatalf("no drain log line:\n%s", e.stderr.String())
	}

	// The ended call is in the audit log, with the code its caller got.
	e.startDaemon(t)
	out := e.ctl(t, "", "audit", "--json").ok(t).stdout
	found := false
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit --json line %q: %v", line, err)
		}
		if strings.HasSuffix(fmt.Sprint(rec["method"]), "/Search") && rec["code"] == "Unavailable" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no Unavailable Search record in the audit log:\n%s", out)
	}
}

// A stop is bounded by one --shutdown-timeout (plus drainGrace), however the hung calls arrived:
// the HTTP front's requests, gRPC calls and searches whose callers left drain at the same time
// until one deadline. They used to drain one after the other, each for the whole timeout, so a
// hung upstream made a stop take ~3x --shutdown-timeout, past the unit's TimeoutStopSec= at the
// default 10 s (systemd then SIGKILLs brokerd mid-drain).
func TestShutdownBoundedByOneTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	e := newEnv(t)
	httpSock := filepath.Join(e.dir, "run", "http.sock")
	e.startDaemon(t, "--shutdown-timeout", timeout.String(), "--http-listen", "unix:"+httpSock)
	token, _ := e.setup(t)
	e.fake.SetFault(scaviotest.Fault{Delay: time.Hour, Times: 3}) // hung: answer only when cancelled
	before := e.fake.Count()

	// A caller that leaves: its search goes on, detached, waiting for the upstream.
	leftCtx, leave := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := e.client(t, client.WithToken(token)).Search(leftCtx, &credbrokerv1.SearchRequest{Query: "left behind"})
		left <- err
	}()
	waitUntil(t, 10*time.Second, "the first hung call reached the upstream", func() bool { return e.fake.Count() > before })
	leave()
	if err := <-left; status.Code(err) != codes.Canceled {
		t.Fatalf("the caller that left: %v", err)
	}
	// A gRPC caller still waiting, and an HTTP front request.
	inflight := make(chan result, 1)
	go func() { inflight <- e.search(t, token, "hung over gRPC") }()
	httpDone := make(chan error, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", httpSock)
		}}}
		req, _ := http.NewRequest(http.MethodPost, "http://brokerd"+scaviotest.SearchPath, strings.NewReader(`{"query": "hung over HTTP"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-api-key", token)
		resp, err := c.Do(req)
		if err != nil {
			httpDone <- err
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "brokerd is shutting down") {
			err = fmt.Errorf("HTTP front answered %d %s, want 503 brokerd is shutting down", resp.StatusCode, body)
		}
		httpDone <- err
	}()
	waitUntil(t, 10*time.Second, "all three hung calls reached the upstream", func() bool { return e.fake.Count() >= before+3 })

	sent := time.Now()
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit: %v\n%s", err, e.stderr.String())
	}
	took := time.Since(sent)
	if r := <-inflight; r.err == nil || !strings.Contains(r.stderr, "brokerd is shutting down") {
		t.Errorf("the gRPC call at the deadline: err=%v\nstdout=%s\nstderr=%s", r.err, r.stdout, r.stderr)
	}
	if err := <-httpDone; err != nil {
		t.Error(err)
	}
	// One timeout, then the calls end at once: well under two. One after the other they took
	// three (6 s here).
	if took >= 2*timeout {
		t.Fatalf("the stop took %s with --shutdown-timeout %s: the drains did not share one deadline\n%s", took, timeout, e.stderr.String())
	}
	if !strings.Contains(e.stderr.String(), "searches still waiting for the upstream") {
		t.Fatalf("the detached search was not cut off at the deadline:\n%s", e.stderr.String())
	}

	// Nothing lost: each caller's record with the code it got, and each search's own record of
	// the credits it may have spent (cut off at the deadline: counted as charged).
	e.startDaemon(t)
	out := e.ctl(t, "", "audit", "--json").ok(t).stdout
	var httpRec, grpcRec, settled int
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec struct {
			Method, Code, Event string
			Credits             uint64
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit --json line %q: %v", line, err)
		}
		switch {
		case rec.Event == "settled-after-caller-left" && rec.Credits > 0:
			settled++
		case rec.Event != "":
		case strings.Contains(rec.Method, "/api/v1/") && rec.Code == "Unavailable":
			httpRec++
		case strings.HasSuffix(rec.Method, "/Search") && rec.Code == "Unavailable":
			grpcRec++
		}
	}
	if httpRec != 1 || grpcRec != 1 || settled != 3 {
		t.Fatalf("audit: %d HTTP front and %d gRPC Unavailable records, %d settled searches with credits; want 1, 1, 3\n%s", httpRec, grpcRec, settled, out)
	}
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SIGHUP re-reads the master keyset: a rotated one (old key + new primary) is accepted and the
// database re-wrapped under it; an unrelated or malformed one is rejected with a clear log line
// and brokerd keeps serving. Afterwards the rotated keyset opens the database and the original
// one alone no longer does.
func TestSIGHUPReloadsMasterKeyset(t *testing.T) {
	e := newEnv(t)
	n := newNotifySocket(t, e.dir)
	e.startDaemonEnv(t, []string{"NOTIFY_SOCKET=" + n.path})
	n.waitFor(t, "READY=1", 15*time.Second, nil)
	token, _ := e.setup(t)

	original := filepath.Join(e.dir, "original.json")
	rotated := filepath.Join(e.dir, "rotated.json")
	e.ctl(t, "", "keyset", "rotate", "--in", e.keyset, "--out", rotated).ok(t)
	copyFile(t, e.keyset, original)

	reload := func(newKeyset string) string {
		t.Helper()
		if err := os.Rename(newKeyset, e.keyset); err != nil {
			t.Fatal(err)
		}
		logBefore := len(e.stderr.String())
		if err := e.daemon.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		msg := n.waitFor(t, "RELOADING=1", 10*time.Second, nil)
		usec, err := strconv.ParseInt(value(msg, "MONOTONIC_USEC"), 10, 64)
		if err != nil || usec <= 0 {
			t.Fatalf("RELOADING=1 without MONOTONIC_USEC: %q", msg)
		}
		n.waitFor(t, "READY=1", 10*time.Second, nil)
		e.search(t, token, "after reload").ok(t)
		return e.stderr.String()[logBefore:]
	}

	if log := reload(rotated); !strings.Contains(log, "master keyset reloaded; the database's keysets are now wrapped under its primary key") {
		t.Fatalf("rotated keyset not accepted:\n%s", log)
	}
	// Keep the good one to restore later.
	copyFile(t, e.keyset, rotated)

	unrelated := filepath.Join(e.dir, "unrelated.json")
	e.ctl(t, "", "keyset", "new", "--out", unrelated).ok(t)
	log := reload(unrelated)
	if !strings.Contains(log, "master keyset reload rejected; still using the keyset loaded earlier") ||
		!strings.Contains(log, "does not decrypt") {
		t.Fatalf("unrelated keyset not rejected clearly:\n%s", log)
	}

	garbage := filepath.Join(e.dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte("{not a keyset"), 0o600); err != nil {
		t.Fatal(err)
	}
	if log := reload(garbage); !strings.Contains(log, "master keyset reload rejected") || !strings.Contains(log, "not a valid Tink JSON keyset") {
		t.Fatalf("malformed keyset not rejected clearly:\n%s", log)
	}

	copyFile(t, rotated, e.keyset)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, e.stderr.String())
	}

	// The rotated keyset opens the re-wrapped database; the original alone does not.
	e.startDaemon(t)
	e.search(t, token, "restarted with the rotated keyset").ok(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db, "--master-keyset", original, "--upstream-url", e.fake.URL).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not decrypt") {
		t.Fatalf("the pre-rotation keyset still opens the database: %v %s", err, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(to)
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// /metrics after a few calls carries the expected series; a non-loopback or Unix address is
// refused at startup.
func TestMetricsScrape(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--metrics-listen", "127.0.0.1:0")
	m := regexp.MustCompile(`addr=(http://127\.0\.0\.1:\d+/metrics)`).FindStringSubmatch(e.stderr.String())
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", e.stderr.String())
	}
	url := m[1]

	token, _ := e.setup(t)
	e.search(t, token, "one").ok(t)
	e.search(t, token, "two").ok(t)
	e.search(t, "cbt_garbage", "q").fails(t, "invalid token")
	e.search(t, token, "--tool", "no_such_tool", "q").fails(t, "unknown tool")
	e.ctl(t, "", "status").ok(t)

	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	text := string(body)
	for _, want := range []string{
		`credbroker_grpc_calls_total{code="OK",method="/credbroker.v1.SearchService/Search",tool="web_search"} 2`,
		`credbroker_grpc_calls_total{code="Unauthenticated",method="/credbroker.v1.SearchService/Search",tool="web_search"} 1`,
		`credbroker_grpc_calls_total{code="InvalidArgument",method="/credbroker.v1.SearchService/Search",tool="unknown"} 1`,
		`credbroker_grpc_calls_total{code="OK",method="/credbroker.v1.AdminService/Status",tool=""} 1`,
		`credbroker_grpc_call_duration_seconds_count{method="/credbroker.v1.SearchService/Search"} 4`,
		`credbroker_upstream_request_duration_seconds_count{path="/api/v1/search"} 2`,
		`credbroker_upstream_responses_total{path="/api/v1/search",status="200"} 2`,
		`credbroker_token_validations_total{result="valid"} 3`,
		`credbroker_token_validations_total{result="invalid"} 1`,
		`credbroker_credentials_due 0`,
		`# TYPE credbroker_audit_write_duration_seconds histogram`,
		`credbroker_master_keyset_reloads_total{result="accepted"} 0`,
		`credbroker_build_info{goversion="go`,
		`process_resident_memory_bytes`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, token) || strings.Contains(text, itKey) {
		t.Error("/metrics carries a secret")
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepPrefix(text, "credbroker_"))
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []struct{ addr, want string }{
		{"0.0.0.0:9464", "not a loopback address"},
		{":9464", "not a loopback address"},
		{"example.com:9464", "not a loopback address"},
		{"unix:" + e.socket, "is brokerd's gRPC socket"},
		{"/run/metrics.sock", "or unix:PATH"},
	} {
		out, err := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset,
			"--upstream-url", e.fake.URL, "--metrics-listen", bad.addr).CombinedOutput()
		if err == nil || !strings.Contains(string(out), bad.want) {
			t.Errorf("--metrics-listen %s: %v %s", bad.addr, err, out)
		}
	}
}

func grepPrefix(text, prefix string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return b.String()
}

// The units pass `systemd-analyze verify`, keep every hardening directive the project promises,
// and stay at an exposure level of "OK" or better. Needs Debian's systemd package (systemd-analyze).
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package: systemd); unit files not verified")
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range []string{"credbroker.service", "credbroker.socket"} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "scripts", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		// verify checks that ExecStart= binaries exist: point them at the ones TestMain built.
		unit := strings.ReplaceAll(string(raw), "/usr/local/bin/", binDir+"/")
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}

	service, _ := os.ReadFile(paths[0])
	for _, directive := range []string{
		"Type=notify", "NotifyAccess=main", "WatchdogSec=", "StateDirectory=credbroker", "StateDirectoryMode=0700",
		"RuntimeDirectory=credbroker", "LoadCredential=master-keyset:", "ExecReload=", "NoNewPrivileges=yes",
		"ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
		"ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n", "RestrictNamespaces=yes", "LockPersonality=yes",
		"MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "SystemCallArchitectures=native",
		"CapabilityBoundingSet=\n", "UMask=0077", "LimitCORE=0",
	} {
		if !strings.Contains(string(service), "\n"+directive) {
			t.Errorf("credbroker.service lacks %q", strings.TrimSpace(directive))
		}
	}

	// The unit's budget matches brokerd's defaults: the fd limit covers --max-conns plus the
	// headroom brokerd warns about, and memory has a hard ceiling.
	if m := regexp.MustCompile(`\nLimitNOFILE=(\d+)\n`).FindStringSubmatch(string(service)); m == nil {
		t.Error("credbroker.service sets no LimitNOFILE=")
	} else if n, _ := strconv.Atoi(m[1]); n < daemon.DefaultMaxConns+daemon.FDHeadroom {
		t.Errorf("LimitNOFILE=%d is below --max-conns %d + %d", n, daemon.DefaultMaxConns, daemon.FDHeadroom)
	}
	for _, directive := range []string{"MemoryMax=", "MemoryHigh=", "Environment=GOMEMLIMIT="} {
		if !strings.Contains(string(service), "\n"+directive) {
			t.Errorf("credbroker.service lacks %q", directive)
		}
	}

	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(analyze, "security", "--offline=true", "--no-pager", paths[0]).CombinedOutput()
	if err != nil && strings.Contains(string(out), "offline") {
		t.Logf("systemd-analyze security --offline unsupported here: %s", out)
		return
	}
	m := regexp.MustCompile(`Overall exposure level for credbroker\.service: ([0-9.]+) (\S+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	level, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security --offline=true: exposure %s %s", m[1], m[2])
	if level > 2.0 {
		t.Errorf("exposure level %s %s: the hardening regressed (was 1.3 OK)", m[1], m[2])
	}

	if out, err := exec.Command("bash", "-n", filepath.Join("..", "..", "scripts", "install.sh")).CombinedOutput(); err != nil {
		t.Errorf("scripts/install.sh: %v\n%s", err, out)
	}
}

// Under the shipped unit, SystemCallFilter=~@privileged fails every chown with EPERM. brokerd only
// needs one for --socket-group, yet it chowned a socket directory it had just created to group -1
// (a no-op) and refused to start: `--metrics-listen unix:/run/credbroker/m/metrics.sock` (or an
// --http-listen or --socket path in a new directory) failed with "--socket-group : chown …:
// operation not permitted" naming a flag nobody gave. strace fails the chown calls as the filter
// would.
func TestNoChownWithoutSocketGroup(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (apt-get install strace): it fails chown as the unit's seccomp filter does")
	}
	if out, err := exec.Command(strace, "-qq", "-o", "/dev/null", "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here (%v: %s)", err, out)
	}
	e := newEnv(t)
	metrics := filepath.Join(e.dir, "m", "metrics.sock")
	httpSock := filepath.Join(e.dir, "h", "http.sock")
	cmd := e.daemonCmd("--metrics-listen", "unix:"+metrics, "--http-listen", "unix:"+httpSock)
	cmd.Args = append([]string{strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=chown,fchown,lchown,fchownat",
		"-e", "inject=chown,fchown,lchown,fchownat:error=EPERM", "--"}, cmd.Args...)
	cmd.Path = strace
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
	for _, p := range []string{metrics, httpSock} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("%s: not a socket (%v)", p, err)
		}
	}
	e.stopTraced(t)
}
