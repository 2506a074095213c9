package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// straceDaemon starts brokerd under strace, tracing fdatasync into traceFile and applying inject
// (an strace -e inject= value, or "" for none).
func (e *env) straceDaemon(t *testing.T, strace, traceFile, inject string) {
	t.Helper()
	cmd := e.daemonCmd()
	args := []string{strace, "-f", "-qq", "-o", traceFile, "-e", "trace=fdatasync"}
	if inject != "" {
		args = append(args, "-e", "inject="+inject)
	}
	cmd.Args = append(args, append([]string{"--"}, cmd.Args...)...)
	cmd.Path = strace
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
}

// tracedPID is the pid of brokerd under the strace that e.daemon runs: strace's only child.
func (e *env) tracedPID(t *testing.T) int {
	t.Helper()
	pid := e.daemon.Process.Pid
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(raw))
	if len(f) != 1 {
		t.Fatalf("strace %d has children %q, want one brokerd", pid, f)
	}
	var child int
	fmt.Sscan(f[0], &child)
	return child
}

// stopTraced sends SIGTERM to brokerd itself (strace would only detach) and waits for both.
func (e *env) stopTraced(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(e.tracedPID(t), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := e.stop(t, 0); err != nil { // signal 0: only wait
		t.Fatal(err)
	}
}

// A failed fdatasync must never make brokerd's answer contradict its database (issue 16 §1).
// bbolt writes the meta page before its last fdatasync, so a commit that reports failure can be
// live. With every other fdatasync failing (strace fault injection), each mint's answer is checked
// against the tokens the restarted brokerd finds: an OK mint's token exists, and no more tokens
// exist than OK plus "outcome unknown" answers ("not stored" means not stored). brokerd must stop
// itself (fail-stop) once a failed commit turned out to be live.
func TestFailedFsyncNeverContradictsTheDatabase(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (apt-get install strace): it injects the fdatasync failures")
	}
	if out, err := exec.Command(strace, "-qq", "-o", "/dev/null", "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here (%v: %s)", err, out)
	}
	// Both parities: the first failing fdatasync is a commit's data sync (nothing lands) or its
	// meta-page sync (it lands although Commit fails: the case that contradicted the database).
	for _, offset := range []int{1, 2} {
		t.Run(fmt.Sprintf("first failure at sync +%d", offset), func(t *testing.T) { failedFsyncRun(t, strace, offset) })
	}
}

func failedFsyncRun(t *testing.T, strace string, offset int) {
	e := newEnv(t)
	e.startDaemon(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Count the fdatasyncs of a start on this database, so the injection starts just after them
	// whatever start-up commits (migrations, records) a future change adds.
	trace := filepath.Join(t.TempDir(), "trace")
	e.straceDaemon(t, strace, trace, "")
	e.stopTraced(t)
	raw, _ := os.ReadFile(trace)
	startSyncs := strings.Count(string(raw), "fdatasync(")
	// The last count includes the stop; a start alone makes at most that many.
	e.straceDaemon(t, strace, filepath.Join(t.TempDir(), "trace2"), fmt.Sprintf("fdatasync:error=EIO:when=%d+2", startSyncs+offset))

	var okIDs []string
	var unknown, notStored int
	for i := 0; i < 12; i++ {
		r := e.ctl(t, "", "token", "mint", "--tools", "web_search", "--json")
		switch {
		case r.err == nil:
			var m struct{ ID string }
			if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m.ID == "" {
				t.Fatalf("mint output %q: %v", r.stdout, err)
			}
			okIDs = append(okIDs, m.ID)
		case strings.Contains(r.stderr, "outcome is unknown") || strings.Contains(r.stderr, "cannot tell whether"):
			unknown++
		case strings.Contains(r.stderr, "not stored") || strings.Contains(r.stderr, "stopped taking writes") || strings.Contains(r.stderr, "cannot write its audit log"):
			notStored++
		case strings.Contains(r.stderr, "is it running") || strings.Contains(r.stderr, "shutting down") || strings.Contains(r.stderr, "connect"):
			// brokerd has stopped itself; nothing more to mint.
			i = 12
		default:
			t.Fatalf("mint %d: unexpected answer: %v\n%s", i, r.err, r.stderr)
		}
	}
	done := make(chan error, 1)
	go func() { done <- e.daemon.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("brokerd exited 0 after a commit of doubtful durability; want a failure exit so systemd restarts it")
		}
	case <-time.After(30 * time.Second):
		t.Errorf("brokerd did not stop itself after failed fdatasyncs (ok=%d unknown=%d not-stored=%d)", len(okIDs), unknown, notStored)
		syscall.Kill(e.tracedPID(t), syscall.SIGTERM)
		<-done
	}
	if !strings.Contains(e.stderr.String(), "restart brokerd so it reads the file again") {
		t.Errorf("no fail-stop log line:\n%s", e.stderr.String())
	}

	e.startDaemon(t)
	out := e.ctl(t, "", "token", "list", "--json", "--all").ok(t).stdout
	have := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var tok struct{ ID string }
		if err := json.Unmarshal([]byte(line), &tok); err != nil {
			// token list --json may print one array instead of lines.
			var toks []struct{ ID string }
			if err := json.Unmarshal([]byte(out), &toks); err != nil {
				t.Fatalf("token list --json: %v\n%s", err, out)
			}
			for _, t := range toks {
				have[t.ID] = true
			}
			break
		}
		have[tok.ID] = true
	}
	for _, id := range okIDs {
		if !have[id] {
			t.Errorf("mint of %s was answered OK but the token does not exist", id)
		}
	}
	if len(have) > len(okIDs)+unknown {
		t.Errorf("%d tokens exist, but only %d mints were answered OK and %d 'outcome unknown' (%d 'not stored'): a mint answered 'not stored' was stored",
			len(have), len(okIDs), unknown, notStored)
	}
	e.ctl(t, "", "audit", "verify").ok(t)
	t.Logf("mints: ok=%d unknown=%d not-stored=%d; tokens after restart: %d", len(okIDs), unknown, notStored, len(have))
}
