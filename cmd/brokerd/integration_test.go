package main

// Process-level tests: the real brokerd and brokerctl binaries, a real bbolt file and Tink keyset
// in a temp dir, and the fake Scavio upstream on loopback.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
)

// binDir holds brokerd and brokerctl built once for the package.
var binDir string

func TestMain(m *testing.M) {
	if os.Getenv("CREDBROKER_ATTEST_HELPER") != "" {
		os.Exit(attestHelper()) // workload_test.go: a registered program, run as another uid
	}
	if os.Getenv("CREDBROKER_HOLD_SOCKET") != "" || os.Getenv("CREDBROKER_HOLD_TCP") != "" {
		os.Exit(m.Run()) // TestHelperHoldConnections or TestHelperHoldTCP, run as another uid: nothing to build
	}
	dir, err := os.MkdirTemp("", "credbroker-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir, "github.com/credbroker/credbroker/cmd/brokerd", "github.com/credbroker/credbroker/cmd/brokerctl")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const itKey = "sk_test_INTEGRATION_a81f5c2e6d9b4037"

// env is one broker deployment in a temp dir.
type env struct {
	t       *testing.T
	dir     string
	socket  string
	db      string
	keyset  string
	fake    *scaviotest.Server
	daemon  *exec.Cmd
	stderr  *logtest.Buffer
	outputs *logtest.Buffer // everything brokerctl printed, to check for leaks
}

func newEnv(t *testing.T) *env {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be long, so use a short dir.
	dir, err := os.MkdirTemp("", "cb-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t: t, dir: dir, socket: filepath.Join(dir, "run", "broker.sock"), db: filepath.Join(dir, "broker.db"),
		keyset: filepath.Join(dir, "master.json"), fake: scaviotest.NewServer(itKey), outputs: &logtest.Buffer{},
	}
	t.Cleanup(func() {
		if e.daemon != nil && e.daemon.ProcessState == nil {
			e.daemon.Process.Kill()
			e.daemon.Wait()
		}
		e.fake.Close()
		os.RemoveAll(dir)
	})
	e.ctl(t, "", "keyset", "new", "--out", e.keyset).ok(t)
	return e
}

type result struct {
	stdout, stderr string
	err            error
}

func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.err != nil {
		t.Fatalf("command failed: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	return r
}

func (r result) fails(t *testing.T, wantStderr string) result {
	t.Helper()
	if r.err == nil {
		t.Fatalf("command succeeded, want failure with %q\nstdout: %s", wantStderr, r.stdout)
	}
	if !strings.Contains(r.stderr, wantStderr) {
		t.Fatalf("stderr %q does not contain %q", r.stderr, wantStderr)
	}
	return r
}

// ctl runs brokerctl against the env's socket with stdin and extra env ("K=V" pairs after args
// are not used: pass token through ctlEnv).
func (e *env) ctl(t *testing.T, stdin string, args ...string) result {
	return e.ctlEnv(t, nil, stdin, args...)
}

func (e *env) ctlEnv(t *testing.T, extraEnv []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "brokerctl"), append([]string{"--socket", e.socket}, args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	e.outputs.Write(out.Bytes())
	e.outputs.Write(errb.Bytes())
	return result{out.String(), errb.String(), err}
}

// startDaemon starts brokerd and waits until its health check answers SERVING.
func (e *env) startDaemon(t *testing.T, extra ...string) {
	t.Helper()
	cmd := e.daemonCmd(extra...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
}

func (e *env) daemonCmd(extra ...string) *exec.Cmd {
	args := append([]string{"--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL}, extra...)
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), args...)
	e.stderr = &logtest.Buffer{}
	cmd.Stderr = e.stderr
	cmd.Stdout = e.stderr
	return cmd
}

func (e *env) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if e.daemon.ProcessState != nil {
			t.Fatalf("brokerd exited: %s", e.stderr.String())
		}
		if healthy(e.socket) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("brokerd not healthy in time: %s", e.stderr.String())
}

func healthy(socket string) bool {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
}

// stop sends sig and returns the exit error (nil for exit 0).
func (e *env) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := e.daemon.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.daemon.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		e.daemon.Process.Kill()
		t.Fatalf("brokerd did not exit after %s", sig)
		return nil
	}
}

func (e *env) setup(t *testing.T) (token, id string) {
	t.Helper()
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	r := e.ctl(t, "", "token", "mint", "--tools", "web_search,google_search", "--ttl", "30m", "--label", "it", "--json").ok(t)
	var minted struct {
		Token     string `json:"token"`
		ID        string `json:"id"`
		ExpiresAt string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &minted); err != nil {
		t.Fatalf("mint --json: %v: %s", err, r.stdout)
	}
	if minted.Token == "" || minted.ID == "" || minted.ExpiresAt == "" {
		t.Fatalf("mint --json incomplete: %s", r.stdout)
	}
	return minted.Token, minted.ID
}

// client dials brokerd's socket with the client package; it is closed when the test ends.
func (e *env) client(t *testing.T, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(e.socket, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) search(t *testing.T, token string, args ...string) result {
	t.Helper()
	return e.ctlEnv(t, []string{"CREDBROKER_TOKEN=" + token}, "", append([]string{"search"}, args...)...)
}

func (e *env) assertNoLeak(t *testing.T, secrets ...string) {
	t.Helper()
	raw, err := os.ReadFile(e.db)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if strings.Contains(e.stderr.String(), s) {
			t.Errorf("brokerd's log contains a secret")
		}
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("the database file contains a secret")
		}
	}
	if strings.Contains(e.outputs.String(), itKey) {
		t.Errorf("brokerctl printed the credential")
	}
}

func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	token, id := e.setup(t)

	r := e.search(t, token, "MCP server security best practices 2026").ok(t)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if lines[len(lines)-1] != "Results: 5" {
		t.Fatalf("search output does not end with Results: 5:\n%s", r.stdout)
	}
	r = e.search(t, token, "--json", "--num", "3", "golang").ok(t)
	var js struct {
		Results []map[string]any `json:"results"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js.Results) != 3 {
		t.Fatalf("search --json: %v %s", err, r.stdout)
	}
	e.search(t, token, "--tool", "google_search", "--search-type", "news", "golang").ok(t)
	if last := e.fake.Requests(); last[len(last)-1].Path != "/api/v1/google" || last[len(last)-1].Body["search_type"] != "news" {
		t.Fatalf("google_search reached upstream as %+v", last[len(last)-1])
	}

	r = e.ctl(t, "", "credential", "list", "--json").ok(t)
	if !strings.Contains(r.stdout, `"scavio_api_key"`) {
		t.Fatalf("credential list: %s", r.stdout)
	}
	r = e.ctl(t, "", "token", "list").ok(t)
	if !strings.Contains(r.stdout, id) || strings.Contains(r.stdout, token) {
		t.Fatalf("token list: %s", r.stdout)
	}
	e.ctl(t, "", "status").ok(t)

	// Rotate: the next search uses version 2 even though the old key is revoked upstream.
	e.fake.AddKey("sk_test_ROTATED_2")
	e.ctl(t, "sk_test_ROTATED_2\n", "rotate", "scavio_api_key").ok(t)
	e.fake.RevokeKey(itKey)
	e.search(t, token, "after rotate").ok(t)

	// Bad inputs: clear one-line errors, non-zero exit.
	e.ctl(t, "", "credential", "put", "scavio_api_key").fails(t, "empty")
	e.ctl(t, "v\n", "credential", "put", "scavio_api_key").fails(t, "already exists")
	e.ctl(t, "", "token", "mint", "--tools", "nope").fails(t, "unknown tool")
	e.search(t, "cbt_garbage", "q").fails(t, "invalid token")
	e.ctlEnv(t, []string{"CREDBROKER_TOKEN="}, "", "search", "q").fails(t, "CREDBROKER_TOKEN")

	e.ctl(t, "", "token", "revoke", id).ok(t)
	e.search(t, token, "q").fails(t, "revoked")
	e.ctl(t, "", "token", "revoke", "0123456789abcdef").fails(t, "not found")

	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: exit %v; log:\n%s", err, e.stderr.String())
	}
	if _, err := os.Stat(e.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("socket left behind after a clean stop")
	}
	e.assertNoLeak(t, itKey, "sk_test_ROTATED_2", token)
}

// kill -9 loses nothing that was acknowledged: tokens and credentials survive, and the stale socket
// is replaced on restart.
func TestKill9AndRestart(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	token, _ := e.setup(t)
	e.search(t, token, "before").ok(t)
	e.stop(t, syscall.SIGKILL)
	if _, err := os.Stat(e.socket); err != nil {
		t.Fatalf("expected a stale socket after kill -9: %v", err)
	}
	e.startDaemon(t)
	r := e.search(t, token, "after restart").ok(t)
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("after restart: %s", r.stdout)
	}
	if err := e.stop(t, syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT: %v", err)
	}
}

func TestStartupRefusals(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)

	run := func(cmd *exec.Cmd) (string, error) {
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return out.String(), err
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Fatal("brokerd did not fail fast")
			return "", nil
		}
	}
	bd := filepath.Join(binDir, "brokerd")

	// Same db while the first daemon runs: the lock is held.
	out, err := run(exec.Command(bd, "--socket", filepath.Join(e.dir, "b.sock"), "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL))
	if err == nil || !strings.Contains(out, "another brokerd") {
		t.Fatalf("second daemon on the same db: %v %s", err, out)
	}
	// Same socket, another db: the socket is live.
	out, err = run(exec.Command(bd, "--socket", e.socket, "--db", filepath.Join(e.dir, "other.db"), "--master-keyset", e.keyset, "--upstream-url", e.fake.URL))
	if err == nil || !strings.Contains(out, "live") {
		t.Fatalf("second daemon on the same socket: %v %s", err, out)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// Wrong master keyset: refused, database unchanged.
	other := filepath.Join(e.dir, "other.json")
	e.ctl(t, "", "keyset", "new", "--out", other).ok(t)
	before, _ := os.ReadFile(e.db)
	out, err = run(exec.Command(bd, "--socket", e.socket, "--db", e.db, "--master-keyset", other, "--upstream-url", e.fake.URL))
	if err == nil || !strings.Contains(out, "master keyset does not decrypt") {
		t.Fatalf("wrong keyset: %v %s", err, out)
	}
	if after, _ := os.ReadFile(e.db); !bytes.Equal(before, after) {
		t.Fatal("a refused start changed the database")
	}
	// A keyset readable by others: refused with the fix in the message.
	os.Chmod(e.keyset, 0o644)
	out, err = run(exec.Command(bd, "--socket", e.socket, "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL))
	if err == nil || !strings.Contains(out, "chmod 600") {
		t.Fatalf("loose keyset: %v %s", err, out)
	}
	e.ctl(t, "", "keyset", "new", "--out", e.keyset).fails(t, "already exists")
}
