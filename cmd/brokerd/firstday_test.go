package main

// Process-level tests of what a first-day operator sees: audit -f, rate-limit visibility, socket
// permission errors and the health probe's message.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/logtest"
)

// `brokerctl audit -f` streams: N calls give N records, and the log grows by the watch's own start
// record, not by a record per poll.
func TestAuditFollowStreamsWithoutGrowingTheLog(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	token, _ := e.setup(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	follow := exec.CommandContext(ctx, filepath.Join(binDir, "brokerctl"), "--socket", e.socket, "audit", "-f", "--json")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logtest.Buffer
	follow.Stderr = &stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	type rec struct {
		Seq    uint64 `json:"seq"`
		Method string `json:"method"`
		Code   string `json:"code"`
		Event  string `json:"event"`
	}
	recs := make(chan rec, 100)
	go func() {
		defer close(recs)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r rec
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Errorf("audit -f --json line %q: %v", sc.Text(), err)
				return
			}
			recs <- r
		}
	}()
	next := func() rec {
		t.Helper()
		select {
		case r, ok := <-recs:
			if !ok {
				t.Fatalf("audit -f ended: %s", stderr.String())
			}
			return r
		case <-ctx.Done():
			t.Fatal("audit -f printed nothing more")
		}
		return rec{}
	}
	// The backlog (put, mint), then the watch's own start.
	var start rec
	for start = next(); !strings.HasSuffix(start.Method, "/WatchAudit"); start = next() {
	}
	if start.Code != "Started" || start.Event != "watch" {
		t.Fatalf("the watch's start record: %+v", start)
	}
	const n = 4
	for range n {
		e.search(t, token, "follow me").ok(t)
	}
	// One more admin call marks the end: every record between is one of the searches.
	e.ctl(t, "", "status").ok(t)
	for i := range n + 1 {
		r := next()
		want := "/credbroker.v1.SearchService/Search"
		if i == n {
			want = "/credbroker.v1.AdminService/Status"
		}
		if r.Seq != start.Seq+1+uint64(i) || r.Method != want {
			t.Fatalf("record %d after the watch started: %+v, want seq %d %s (a poll or other record in between?)", i, r, start.Seq+1+uint64(i), want)
		}
	}
	if err := follow.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range recs { // drain until it exits
	}
	if err := follow.Wait(); err != nil {
		t.Fatalf("audit -f after Ctrl-C: %v: %s", err, stderr.String())
	}
}

// Rate limits are visible: list and status show them, and a search held for a slot says so on
// stderr. Rate 1/3s, burst 1: the second of two back-to-back searches waits about 3s, far over the
// 1s threshold whatever the machine's speed; nothing is asserted about the first.
func TestRateLimitVisibleEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--cache-ttl", "0")
	token, _ := e.setup(t)
	e.ctl(t, "", "credential", "policy", "scavio_api_key", "--rate", "1/3s", "--burst", "1", "--max-wait", "20s", "--monthly-credits", "500").ok(t)

	want := "rate 1/3s burst 1 max-wait 20s, credits 0/500 this month"
	if r := e.ctl(t, "", "credential", "list").ok(t); !strings.Contains(r.stdout, want) {
		t.Fatalf("credential list does not show the limits:\n%s", r.stdout)
	}
	if r := e.ctl(t, "", "status").ok(t); !strings.Contains(r.stdout, "limits scavio_api_key:") || !strings.Contains(r.stdout, want) {
		t.Fatalf("status does not show the limits:\n%s", r.stdout)
	}
	e.search(t, token, "first").ok(t)
	r := e.search(t, token, "second").ok(t)
	if !strings.Contains(r.stderr, "brokerctl: waited ") || !strings.Contains(r.stderr, "s for a rate-limit slot on scavio_api_key") {
		t.Fatalf("the second search does not say it waited: stderr %q", r.stderr)
	}
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("second search: %s", r.stdout)
	}
}

// A uid outside the socket's group is told that, not "is it running?", by every command and by
// the health probe; one in the group whose socket mode shuts the group out is told that instead.
func TestSocketPermissionDeniedNamesTheGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run brokerctl as uid 65534 (CI runs as root); client/errors_test.go covers a non-root run")
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} { // let uid 65534 reach the binaries and the socket's parent
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.startDaemon(t) // socket 0660 and its directory 0750, both group root
	group := "root"
	if g, err := user.LookupGroupId("0"); err == nil {
		group = g.Name
	}
	who := strconv.Itoa(nobody)
	if u, err := user.LookupId(who); err == nil {
		who = u.Username
	}
	want := fmt.Sprintf("brokerctl: permission denied on %s: your uid %d is not in group %s (ask an operator: usermod -aG %s %s)", e.socket, nobody, group, group, who)
	for _, args := range [][]string{{"status"}, {"audit"}, {"search", "q"}} {
		r := e.asUIDGroups(t, nobody, nil, args...)
		if r.err == nil || strings.TrimSpace(r.stderr) != want {
			t.Errorf("%v as uid %d: stderr %q, want %q", args, nobody, r.stderr, want)
		}
	}
	if r := e.asUIDGroups(t, nobody, nil, "health"); r.err == nil || !strings.HasPrefix(r.stderr, "brokerctl: not healthy: permission denied on "+e.socket+": your uid 65534 is not in group "+group) {
		t.Errorf("health as uid %d: %q", nobody, r.stderr)
	}

	// In the group, but the socket's mode lets the group nothing.
	if err := os.Chmod(e.socket, 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.asUIDGroups(t, nobody, []uint32{0}, "status")
	if r.err == nil || !strings.Contains(r.stderr, fmt.Sprintf("permission denied on %s: your uid %d is in group %s, but the mode of %s (0600) gives that group no access", e.socket, nobody, group, e.socket)) {
		t.Errorf("in the group, socket 0600: %q", r.stderr)
	}

	// A stopped brokerd is still "is it running?".
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.ctl(t, "", "status").fails(t, "cannot reach brokerd at "+e.socket+": is it running?")
}

// asUIDGroups runs brokerctl as uid (gid uid) with exactly the supplementary groups given.
func (e *env) asUIDGroups(t *testing.T, uid uint32, groups []uint32, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "brokerctl"), append([]string{"--socket", e.socket}, args...)...)
	cmd.Env = []string{"CREDBROKER_TOKEN=cbt_0123456789abcdef_x", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: groups, NoSetGroups: false}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return result{out.String(), errb.String(), err}
}
