package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// attestHelper is a registered program: it fetches a token with no secret, searches with it,
// prints "TOKEN id" and "RESULTS n" (or "ERR message"), then waits for stdin to close and exits.
// The test binary runs it as another uid (TestMain dispatches on CREDBROKER_ATTEST_HELPER).
func attestHelper() int {
	socket := os.Getenv("CREDBROKER_SOCKET")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if os.Getenv("CREDBROKER_ATTEST_HELPER") == "renew" {
		return renewHelper(ctx, socket)
	}
	c, err := client.New(socket)
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	defer c.Close()
	resp, err := c.FetchToken(ctx, nil)
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	tc, err := client.New(socket, client.WithToken(resp.GetToken()))
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	defer tc.Close()
	res, err := tc.Search(ctx, &credbrokerv1.SearchRequest{Query: "attested"})
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	fmt.Printf("TOKEN %s\nRESULTS %d\n", resp.GetId(), len(res.GetResults()))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperProc is a running attestHelper.
type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

// startHelper runs exe (a copy of the test binary) as uid:gid and returns it once it printed its
// first line.
func (e *env) startHelper(t *testing.T, exe string, uid, gid uint32) (*helperProc, string) {
	t.Helper()
	return e.startHelperIn(t, exe, uid, gid, -1)
}

// startHelperIn is startHelper with the helper started inside the cgroup v2 directory open as
// cgroupFD (none when -1), before it runs a single instruction of its own.
func (e *env) startHelperIn(t *testing.T, exe string, uid, gid uint32, cgroupFD int) (*helperProc, string) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = []string{"CREDBROKER_ATTEST_HELPER=1", "CREDBROKER_SOCKET=" + e.socket, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgroupFD
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{cmd: cmd, stdin: in, lines: bufio.NewScanner(out)}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	if !h.lines.Scan() {
		t.Fatalf("helper printed nothing (exit %v)", cmd.Wait())
	}
	return h, h.lines.Text()
}

// copyExe copies the test binary to dir/name, readable and executable by everyone.
func copyExe(t *testing.T, dir, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestWorkloadAttestation: a registered program gets a token with no secret and searches; the
// same program under another uid, and another program under the same uid, are refused with a
// message naming what did not match; the token is revoked when its process exits.
func TestWorkloadAttestation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the workload as uid 65534 (CI runs as root)")
	}
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper := copyExe(t, e.dir, "mcp-helper")
	other := copyExe(t, e.dir, "other-helper")
	e.startDaemon(t, "--socket-group", "65534")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)

	// No registrations: refused, and says how to add one.
	_, line := e.startHelper(t, helper, nobody, nobody)
	if !strings.Contains(line, "none are registered") {
		t.Fatalf("no registration: %q", line)
	}
	e.ctl(t, "", "workload", "add", "anyone", "--tools", "web_search").fails(t, "at least one of --uid, --gid or --unit")
	e.ctl(t, "", "workload", "add", "mcp", "--tools", "web_search", "--uid", "65534", "--exe", helper, "--pin-exe", "--ttl", "10m").ok(t)
	if out := e.ctl(t, "", "status").ok(t).stdout; !strings.Contains(out, "workload mcp:") || !strings.Contains(out, "uid=65534") {
		t.Fatalf("status does not show the registration:\n%s", out)
	}
	var listed []struct {
		Name      string   `json:"name"`
		UIDs      []uint32 `json:"uids"`
		Exe       string   `json:"exe"`
		ExeSHA256 string   `json:"exe_sha256"`
	}
	if err := json.Unmarshal([]byte(e.ctl(t, "", "workload", "list", "--json").ok(t).stdout), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].Name != "mcp" || listed[0].Exe != helper || len(listed[0].ExeSHA256) != 64 || listed[0].UIDs[0] != nobody {
		t.Fatalf("workload list --json: %+v", listed)
	}

	// The registered program, as the registered uid: a token with no secret, and a search.
	h, line := e.startHelper(t, helper, nobody, nobody)
	id, ok := strings.CutPrefix(line, "TOKEN ")
	if !ok {
		t.Fatalf("registered program refused: %q", line)
	}
	if !h.lines.Scan() || h.lines.Text() != "RESULTS 5" {
		t.Fatalf("search with the fetched token: %q", h.lines.Text())
	}
	if out := e.ctl(t, "", "token", "inspect", id).ok(t).stdout; strings.Contains(out, "revoked") {
		t.Fatalf("token revoked while its process lives:\n%s", out)
	}

	// Same program, another uid (gid 65534 so it can reach the socket): refused, naming the uid.
	_, line = e.startHelper(t, helper, nobody-1, nobody)
	if !strings.Contains(line, "PermissionDenied") && !strings.Contains(line, "uid 65533") {
		t.Fatalf("other uid: %q", line)
	}
	if !strings.Contains(line, "mcp: uid 65533") {
		t.Fatalf("refusal does not name the uid: %q", line)
	}
	// Another program, same uid: refused, naming the exe path.
	_, line = e.startHelper(t, other, nobody, nobody)
	if !strings.Contains(line, "exe path "+other) {
		t.Fatalf("refusal does not name the exe: %q", line)
	}
	// brokerctl itself, same uid: likewise.
	e.asUID(t, nobody, "", "token", "fetch").fails(t, "exe path")

	// The process exits: its token is revoked.
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper exit: %v", err)
	}
	exited := time.Now()
	c := e.client(t)
	for {
		ti, err := c.GetToken(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ti.GetRevoked() {
			t.Logf("token revoked %s after its process exited", time.Since(exited).Round(time.Millisecond))
			break
		}
		if time.Since(exited) > 10*time.Second {
			t.Fatal("token still live 10s after its process exited")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out := e.ctl(t, "", "audit", "--json").ok(t).stdout
	for _, want := range []string{`"event":"fetch"`, `"workload":"mcp"`, `"event":"revoke-process-exit"`, `"event":"attestation-refused"`} {
		if !strings.Contains(out, want) {
			t.Errorf("audit lacks %s", want)
		}
	}

	// A restart revokes process-bound tokens it can no longer watch.
	h2, line := e.startHelper(t, helper, nobody, nobody)
	id2, ok := strings.CutPrefix(line, "TOKEN ")
	if !ok {
		t.Fatalf("second fetch: %q", line)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.startDaemon(t, "--socket-group", "65534")
	ti, err := e.client(t).GetToken(context.Background(), id2)
	if err != nil || !ti.GetRevoked() {
		t.Fatalf("process-bound token after restart: revoked=%v err=%v", ti.GetRevoked(), err)
	}
	h2.stdin.Close()
	h2.cmd.Wait()
	e.ctl(t, "", "workload", "remove", "mcp").ok(t)
	e.ctl(t, "", "workload", "remove", "mcp").fails(t, "not found")
}

// waitRevoked polls until token id is revoked and returns how long that took after since.
func (e *env) waitRevoked(t *testing.T, id string, since time.Time) time.Duration {
	t.Helper()
	c := e.client(t)
	for {
		ti, err := c.GetToken(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ti.GetRevoked() {
			return time.Since(since)
		}
		if time.Since(since) > 10*time.Second {
			t.Fatalf("token %s still live 10s later", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExecRevokesOnExit: `brokerctl exec` gives the child a working token in its environment,
// passes its exit status through, and the token is revoked when the child exits, or when
// brokerctl itself is killed.
func TestExecRevokesOnExit(t *testing.T) {
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
	}
	e := newEnv(t)
	e.startDaemon(t)
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	ctl := filepath.Join(binDir, "brokerctl")
	script := `set -e; case "$*" in *cbt_*) exit 90;; esac
"` + ctl + `" search exec-query | tail -1
echo "id=$(echo "$CREDBROKER_TOKEN" | cut -d_ -f2)"; exit 7`
	r := e.ctl(t, "", "exec", "--tools", "web_search", "--ttl", "5m", "--", "sh", "-c", script)
	var ee *exec.ExitError
	if !errors.As(r.err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("exec exit: %v (want status 7)\n%s%s", r.err, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "Results: 5") {
		t.Fatalf("child's search: %s%s", r.stdout, r.stderr)
	}
	_, id, ok := strings.Cut(strings.TrimSpace(r.stdout), "id=")
	if !ok || id == "" {
		t.Fatalf("no token id: %s", r.stdout)
	}
	if ti, err := e.client(t).GetToken(context.Background(), id); err != nil || !ti.GetRevoked() {
		t.Fatalf("token after the child exited: revoked=%v err=%v", ti.GetRevoked(), err)
	}
	e.ctl(t, "", "exec", "--", "sh", "-c", "exit 0").ok(t)
	r = e.ctl(t, "", "exec", "--", "sh", "-c", "kill -TERM $$")
	if !errors.As(r.err, &ee) || ee.ExitCode() != 128+15 {
		t.Fatalf("child killed by SIGTERM: %v, want status 143", r.err)
	}

	// brokerctl killed outright: brokerd's watch of it revokes the token.
	cmd := exec.Command(ctl, "--socket", e.socket, "exec", "--", "sh", "-c", `echo "$CREDBROKER_TOKEN" | cut -d_ -f2; echo $$; exec sleep 60`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var id2, childPID string
	if sc.Scan() {
		id2 = sc.Text()
	}
	if sc.Scan() {
		childPID = sc.Text()
	}
	t.Cleanup(func() { exec.Command("kill", childPID).Run() })
	cmd.Process.Kill()
	cmd.Wait()
	t.Logf("token revoked %s after brokerctl was killed", e.waitRevoked(t, id2, time.Now()).Round(time.Millisecond))
}

// renewHelper uses the Go client with no token at all: it searches until it has seen four
// tokens (the first and three renewals) and prints "RENEWED tokens calls", or "ERR" on the first
// failed call.
func renewHelper(ctx context.Context, socket string) int {
	c, err := client.New(socket)
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	defer c.Close()
	seen, calls := map[string]bool{}, 0
	for len(seen) < 4 {
		who, err := c.WhoAmI(ctx)
		if err != nil {
			fmt.Println("ERR whoami", calls, err)
			return 2
		}
		seen[who.GetTokenId()] = true
		if _, err := c.Search(ctx, &credbrokerv1.SearchRequest{Query: "renew"}); err != nil {
			fmt.Println("ERR search", calls, err)
			return 2
		}
		calls += 2
		time.Sleep(20 * time.Millisecond) // a server's pace, not a synchronisation
	}
	fmt.Printf("RENEWED %d %d\n", len(seen), calls)
	return 0
}

// TestClientRenewsAsAnotherUID: the Go client with no token, in a process of another uid,
// renews across several short ttls with no failed call.
func TestClientRenewsAsAnotherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the workload as uid 65534 (CI runs as root)")
	}
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+)")
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper := copyExe(t, e.dir, "mcp-helper")
	e.startDaemon(t, "--socket-group", "65534")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	e.ctl(t, "", "workload", "add", "renew", "--tools", "web_search", "--uid", "65534", "--exe", helper, "--ttl", "1s").ok(t)
	cmd := exec.Command(helper)
	cmd.Env = []string{"CREDBROKER_ATTEST_HELPER=renew", "CREDBROKER_SOCKET=" + e.socket, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "RENEWED 4 ") {
		t.Fatalf("helper: %v: %s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
