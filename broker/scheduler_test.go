package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/clocktest"
	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

type lockedBuf = logtest.Buffer

type schedEnv struct {
	b     *Broker
	st    *store.Store
	clock *clocktest.Fake
	fake  *scaviotest.Server
	logs  *lockedBuf
	dir   string
}

const schedKey = "sk_test_SCHED_v1"

func newSchedEnv(t *testing.T) *schedEnv {
	t.Helper()
	dir := t.TempDir()
	st := storetest.Open(t, dir, store.Options{})
	fake := scaviotest.NewServer(schedKey)
	up, err := upstream.New(upstream.Config{BaseURL: fake.URL, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktest.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	logs := &lockedBuf{}
	b, err := New(Config{
		Store: st, Upstream: up, Logger: slog.New(slog.NewTextHandler(logs, nil)), Now: clk.Now, Clock: clk,
		Scheduler: SchedulerConfig{Interval: 10 * time.Second, Stagger: time.Minute, BackoffBase: time.Minute, BackoffMax: 4 * time.Minute, CommandTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); fake.Close() })
	return &schedEnv{b: b, st: st, clock: clk, fake: fake, logs: logs, dir: dir}
}

// script writes an executable shell script that first appends a line to <dir>/runs-<name>.
func (e *schedEnv) script(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	text := fmt.Sprintf("#!/bin/sh\necho run >> %s/runs-%s\n%s\n", e.dir, name, body)
	if err := os.WriteFile(p, []byte(text), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *schedEnv) runs(name string) int {
	b, _ := os.ReadFile(filepath.Join(e.dir, "runs-"+name))
	return bytes.Count(b, []byte("run"))
}

func (e *schedEnv) put(t *testing.T, name string, p store.Policy) {
	t.Helper()
	if _, err := e.st.PutCredential(name, []byte(schedKey), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.SetPolicy(context.Background(), name, p, Caller{UID: uint32(os.Geteuid()), Known: true}); err != nil {
		t.Fatal(err)
	}
}

func (e *schedEnv) version(t *testing.T, name string) uint64 {
	t.Helper()
	c, err := e.st.GetCredential(name)
	if err != nil {
		t.Fatal(err)
	}
	return c.Version
}

// printKey prints a new key derived from the current version, so each rotation's key is known.
const printKey = `echo "sk_test_SCHED_v$((CREDBROKER_CURRENT_VERSION + 1))"`

func TestSchedulerRotatesWhenDue(t *testing.T) {
	e := newSchedEnv(t)
	cmd := e.script(t, "newkey", printKey)
	e.put(t, DefaultCredential, store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}, Verify: true})
	e.fake.AddKey("sk_test_SCHED_v2")
	ctx := context.Background()

	e.b.rot.sched.tick(ctx)
	if e.runs("newkey") != 0 || e.version(t, DefaultCredential) != 1 {
		t.Fatal("rotated before it was due")
	}
	e.clock.Advance(time.Hour)
	e.b.rot.sched.tick(ctx)
	if v := e.version(t, DefaultCredential); v != 2 {
		t.Fatalf("not rotated when due: v%d\n%s", v, e.logs.String())
	}
	_, vs, _ := e.st.History(DefaultCredential)
	v2 := vs[len(vs)-1]
	if v2.How != store.HowScheduled || !v2.Verified || v2.CreatedByUID == nil || *v2.CreatedByUID != uint32(os.Geteuid()) {
		t.Fatalf("scheduled version: %+v", v2)
	}
	if last := e.fake.Requests(); last[len(last)-1].Key != "sk_test_SCHED_v2" {
		t.Fatal("the verification call did not use the new key")
	}
	if !strings.Contains(e.logs.String(), "credential due for rotation") {
		t.Fatal("no due warning logged")
	}
	audit, _ := e.st.ListAudit(0, time.Time{}, 100)
	var events []string
	for _, r := range audit {
		events = append(events, r.Event)
	}
	if got := strings.Join(events, ","); !strings.Contains(got, "rotation-due") || !strings.Contains(got, "scheduled-rotate") {
		t.Fatalf("audit events: %s", got)
	}
	evs, _ := e.st.CredentialEvents(DefaultCredential)
	var names []string
	for _, ev := range evs {
		names = append(names, ev.Event)
	}
	if got := strings.Join(names, ","); got != "policy,rotation-due,scheduled-rotate" {
		t.Fatalf("credential events: %s", got)
	}
	// v2 is fresh: nothing more happens until it is due.
	e.clock.Advance(59 * time.Minute)
	e.b.rot.sched.tick(ctx)
	if e.runs("newkey") != 1 {
		t.Fatal("ran the command for a credential that is not due")
	}
	if strings.Contains(e.logs.String(), "sk_test_SCHED_v2") {
		t.Fatal("the log contains the new key")
	}
}

func TestSchedulerStaggersDueCredentials(t *testing.T) {
	e := newSchedEnv(t)
	cmd := e.script(t, "newkey", printKey)
	for _, n := range []string{"a", "b"} {
		e.put(t, n, store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}})
	}
	ctx := context.Background()
	e.clock.Advance(2 * time.Hour)
	e.b.rot.sched.tick(ctx)
	e.b.rot.sched.tick(ctx)
	if got := e.version(t, "a") + e.version(t, "b"); got != 3 {
		t.Fatalf("two due credentials: versions sum %d, want exactly one rotated", got)
	}
	e.clock.Advance(59 * time.Second)
	e.b.rot.sched.tick(ctx)
	if got := e.version(t, "a") + e.version(t, "b"); got != 3 {
		t.Fatal("second rotation inside the stagger gap")
	}
	e.clock.Advance(time.Second)
	e.b.rot.sched.tick(ctx)
	if e.version(t, "a") != 2 || e.version(t, "b") != 2 {
		t.Fatal("second credential not rotated after the stagger gap")
	}
}

func TestSchedulerFailuresBackOff(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		verify  bool
		wantErr string
	}{
		{"exit status", "exit 3", false, "exited with status 3"},
		{"timeout", "sleep 30", false, "timed out after 1s"},
		{"too much output", `head -c 20000 /dev/zero | tr '\0' 'k'`, false, "printed more than 8192 bytes"},
		{"no output", "true", false, "printed no key"},
		{"not a key", `printf 'two words\n'`, false, "not a key"},
		{"same key", "echo " + schedKey, false, "printed the current key"},
		{"rejected with verify", "echo sk_test_SCHED_UNKNOWN", true, "upstream rejected the new key; it was not promoted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newSchedEnv(t)
			cmd := e.script(t, "cmd", tc.body)
			e.put(t, DefaultCredential, store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}, Verify: tc.verify})
			ctx := context.Background()
			e.clock.Advance(time.Hour)
			e.b.rot.sched.tick(ctx)
			if e.version(t, DefaultCredential) != 1 {
				t.Fatal("a failed scheduled rotation changed the credential")
			}
			st, err := e.b.Status()
			if err != nil {
				t.Fatal(err)
			}
			warn := strings.Join(st.Warnings, "\n")
			if !strings.Contains(warn, "scheduled rotation failed 1 time(s)") || !strings.Contains(warn, tc.wantErr) {
				t.Fatalf("status warnings %q, want %q", warn, tc.wantErr)
			}
			if len(st.Rotation) != 1 || st.Rotation[0].Failures != 1 || !st.Rotation[0].NextAttempt.Equal(e.clock.Now().Add(time.Minute)) {
				t.Fatalf("rotation status: %+v", st.Rotation)
			}
			for _, secret := range []string{"SCHED_UNKNOWN", "kkkk", "two words"} {
				if strings.Contains(warn, secret) || strings.Contains(e.logs.String(), secret) {
					t.Fatal("command output reached the status or the log")
				}
			}
			if tc.name == "timeout" {
				return // the backoff below is the same for every failure; spare the seconds
			}
			// Backoff: no retry before a minute, then 2, then 4 (the cap).
			e.b.rot.sched.tick(ctx)
			e.clock.Advance(59 * time.Second)
			e.b.rot.sched.tick(ctx)
			if n := e.runs("cmd"); n != 1 {
				t.Fatalf("retried during backoff: %d runs", n)
			}
			for i, wait := range []time.Duration{time.Second, 2 * time.Minute, 4 * time.Minute, 4 * time.Minute} {
				e.clock.Advance(wait)
				e.b.rot.sched.tick(ctx)
				if n := e.runs("cmd"); n != i+2 {
					t.Fatalf("after %v: %d runs, want %d", wait, n, i+2)
				}
			}
		})
	}
}

func TestRotateCommandEnvironment(t *testing.T) {
	e := newSchedEnv(t)
	t.Setenv("CREDBROKER_LEAK_CHECK", "leaked")
	cmd := e.script(t, "env", `
[ -z "$CREDBROKER_LEAK_CHECK" ] || exit 11
[ -z "$HOME" ] || exit 12
[ "$CREDBROKER_CREDENTIAL" = "$1" ] || exit 13
[ "$(pwd)" = / ] || exit 14
if read line; then exit 15; fi
[ "$2" = "two words" ] || exit 16
echo sk_test_ENV_OK`)
	key, err := runRotateCommand(context.Background(), []string{cmd, DefaultCredential, "two words"}, DefaultCredential, 1, time.Second)
	if err != nil || string(key) != "sk_test_ENV_OK" {
		t.Fatalf("%q %v", key, err)
	}
}

// Keys up to the 8 KiB limit come through whatever the pipe's chunking; longer output is refused,
// and a command that leaves a process holding its stdout fails with a message that says so.
func TestRotateCommandOutput(t *testing.T) {
	e := newSchedEnv(t)
	for _, tc := range []struct {
		name, body, wantErr string
		wantLen             int
	}{
		{"5000-byte key in one write", `printf '%s\n' "$(head -c 5000 /dev/zero | tr '\0' k)"`, "", 5000},
		{"8192-byte key", `printf '%s\n' "$(head -c 8192 /dev/zero | tr '\0' k)"`, "", 8192},
		{"8193 bytes", `printf '%s\n' "$(head -c 8193 /dev/zero | tr '\0' k)"`, "printed more than 8192 bytes", 0},
		{"background process keeps stdout", `sleep 30 & echo sk_test_BG`, "left a process holding its output", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := e.script(t, strings.ReplaceAll(tc.name, " ", "-"), tc.body)
			key, err := runRotateCommand(context.Background(), []string{cmd}, DefaultCredential, 1, 20*time.Second)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(key) != tc.wantLen {
				t.Fatalf("got %d bytes, %v; want %d", len(key), err, tc.wantLen)
			}
		})
	}
}

func TestCheckProgram(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	ok := write("ok", 0o755)
	loose := write("loose", 0o775)
	noexec := write("noexec", 0o644)
	looseDir := filepath.Join(dir, "open")
	os.Mkdir(looseDir, 0o777)
	os.Chmod(looseDir, 0o777)
	inLooseDir := filepath.Join(looseDir, "cmd")
	os.WriteFile(inLooseDir, []byte("#!/bin/sh\n"), 0o700)
	// Symlinks are followed, and both the path as typed and where it leads must be safe.
	link := filepath.Join(dir, "link")
	os.Symlink(ok, link)
	linkedDir := filepath.Join(dir, "linked")
	os.Symlink(dir, linkedDir)
	tests := []struct {
		name, path, wantErr string
	}{
		{"ok", ok, ""},
		{"relative", "new-key", "clean absolute path"},
		{"unclean", dir + "/../" + filepath.Base(dir) + "/ok", "clean absolute path"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"group writable", loose, "writable by group or others"},
		{"not executable", noexec, "not executable"},
		{"directory", dir, "not a regular file"},
		{"in a world-writable directory", inLooseDir, "writable by group or others"},
		{"symlink to a safe program", link, ""},
		{"through a symlinked directory", filepath.Join(linkedDir, "ok"), ""},
		{"symlink to an unsafe program", filepath.Join(dir, "link-loose"), "(the path leads to " + loose + ")"},
	}
	os.Symlink(loose, filepath.Join(dir, "link-loose"))
	if os.Geteuid() == 0 {
		other := write("other", 0o755)
		os.Chown(other, 4242, 4242)
		tests = append(tests, struct{ name, path, wantErr string }{"owned by another user", other, "owned by uid 4242"})
		// A root-owned program in another user's directory, reached through a link from a safe
		// directory: that user can swap the program, so it is refused.
		theirs := filepath.Join(dir, "theirs")
		os.Mkdir(theirs, 0o755)
		os.Chown(theirs, 4242, 4242)
		prog := filepath.Join(theirs, "rotate")
		os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755)
		os.Symlink(prog, filepath.Join(dir, "link-theirs"))
		tests = append(tests, struct{ name, path, wantErr string }{"symlink into another user's directory", filepath.Join(dir, "link-theirs"), "theirs is owned by uid 4242"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkProgram(tc.path)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestSetPolicyCommandNeedsRootOrDaemonUID(t *testing.T) {
	e := newSchedEnv(t)
	cmd := e.script(t, "newkey", printKey)
	if _, err := e.st.PutCredential("c", []byte("k"), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	p := store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}}
	other := uint32(os.Geteuid()) + 4242
	if _, err := e.b.SetPolicy(context.Background(), "c", p, Caller{UID: other, Known: true}); err == nil || !strings.Contains(err.Error(), "only root or brokerd's own uid") {
		t.Fatalf("admin uid set a rotate command: %v", err)
	}
	if _, err := e.b.SetPolicy(context.Background(), "c", p, Caller{}); err == nil {
		t.Fatal("unknown caller set a rotate command")
	}
	// A policy without a command is fine for any admin.
	if _, err := e.b.SetPolicy(context.Background(), "c", store.Policy{MaxAge: time.Hour}, Caller{UID: other, Known: true}); err != nil {
		t.Fatal(err)
	}
}

// RunScheduler runs on the injected clock: advancing it past the interval triggers a check.
func TestRunSchedulerUsesTheClock(t *testing.T) {
	e := newSchedEnv(t)
	cmd := e.script(t, "newkey", printKey)
	e.put(t, DefaultCredential, store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.b.RunScheduler(ctx) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("the first tick", func() bool { return e.clock.Waiting() == 1 })
	e.clock.Advance(time.Hour) // due, and past the interval
	waitFor("the scheduled rotation", func() bool { return e.version(t, DefaultCredential) == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A rotate command edited in the database file (here under the running brokerd, pointed at
// another program) is never run: the policy does not verify, so the scheduler rotates nothing
// and says why in its log.
func TestSchedulerNeverRunsATamperedRotateCommand(t *testing.T) {
	e := newSchedEnv(t)
	good := e.script(t, "newkey", printKey)
	evil := e.script(t, "evilky", printKey) // same length: an in-place edit of the record
	e.put(t, DefaultCredential, store.Policy{MaxAge: time.Hour, RotateCommand: []string{good}})
	if n := storetest.EditFile(t, e.st.Path(), []byte(good), []byte(evil)); n == 0 {
		t.Fatal("rotate command not found in the file")
	}
	e.clock.Advance(2 * time.Hour)
	e.b.rot.sched.tick(context.Background())
	if e.runs("newkey") != 0 || e.runs("evilky") != 0 {
		t.Fatalf("ran a rotate command from a record that does not verify (newkey %d, evilky %d)", e.runs("newkey"), e.runs("evilky"))
	}
	if _, err := e.st.GetCredential(DefaultCredential); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("GetCredential: %v, want ErrTampered", err)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "DATABASE TAMPERING") || !strings.Contains(logs, "restore the database from a backup") {
		t.Fatalf("scheduler log does not say why: %s", logs)
	}
}

// A version stamped rotated ahead of the clock (the clock was ahead then, or has stepped back
// since) is due max age after the scheduler first saw it, not max age after the stamp, and the
// clock is named once per version in the log, the credential's events and status. A stamp within
// ClockAheadTolerance counts as before.
func TestSchedulerVersionStampedAheadOfTheClock(t *testing.T) {
	const maxAge = time.Hour
	for _, tc := range []struct {
		name    string
		ahead   time.Duration // RotatedAt - now when the scheduler first sees it
		dueIn   time.Duration // from then until the scheduler rotates it
		warning bool
	}{
		{"a day ahead", 24 * time.Hour, maxAge, true},
		{"just past the tolerance", 2 * time.Minute, maxAge, true},
		{"a few seconds ahead", 5 * time.Second, maxAge + 5*time.Second, false},
		{"not ahead", 0, maxAge, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSchedEnv(t)
			cmd := e.script(t, "newkey", printKey)
			t0 := e.clock.Now()
			if _, err := e.st.PutCredential(DefaultCredential, []byte(schedKey), t0.Add(tc.ahead)); err != nil {
				t.Fatal(err)
			}
			if _, err := e.b.SetPolicy(context.Background(), DefaultCredential, store.Policy{MaxAge: maxAge, RotateCommand: []string{cmd}}, Caller{UID: uint32(os.Geteuid()), Known: true}); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			e.b.rot.sched.tick(ctx)
			c, err := e.st.GetCredential(DefaultCredential)
			if err != nil {
				t.Fatal(err)
			}
			// `credential list` and status show the time the scheduler will act on.
			if next, overdue, ok := e.b.Due(c); !ok || overdue || !next.Equal(t0.Add(tc.dueIn)) {
				t.Fatalf("credential list: next due %s (overdue %v), want %s", next, overdue, t0.Add(tc.dueIn))
			}
			ri, err := e.b.rotationInfo(e.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(ri.Rotation) != 1 || !ri.Rotation[0].NextDue.Equal(t0.Add(tc.dueIn)) {
				t.Fatalf("status rotation: %+v, want next due %s", ri.Rotation, t0.Add(tc.dueIn))
			}
			statusWarned := strings.Contains(strings.Join(ri.Warnings, "\n"), "ahead of this host's clock")
			if statusWarned != tc.warning {
				t.Fatalf("status warnings %q: want a clock warning %v", ri.Warnings, tc.warning)
			}

			e.clock.Advance(tc.dueIn - time.Second)
			e.b.rot.sched.tick(ctx)
			if e.runs("newkey") != 0 || e.version(t, DefaultCredential) != 1 {
				t.Fatal("rotated before it was due")
			}
			e.clock.Advance(time.Second)
			e.b.rot.sched.tick(ctx)
			if e.runs("newkey") != 1 || e.version(t, DefaultCredential) != 2 {
				t.Fatalf("not rotated %s after the scheduler first saw it (runs %d)\n%s", tc.dueIn, e.runs("newkey"), e.logs.String())
			}
			e.b.rot.sched.tick(ctx)

			if n := strings.Count(e.logs.String(), "ahead of this host's clock"); n != b2i(tc.warning) {
				t.Fatalf("clock warnings logged: %d, want %d\n%s", n, b2i(tc.warning), e.logs.String())
			}
			evs, _ := e.st.CredentialEvents(DefaultCredential)
			n := 0
			for _, ev := range evs {
				if ev.Event == "rotation-clock-ahead" {
					n++
					if ev.Version != 1 || !strings.Contains(ev.Detail, "ahead of this host's clock") {
						t.Fatalf("clock event: %+v", ev)
					}
				}
			}
			if n != b2i(tc.warning) {
				t.Fatalf("rotation-clock-ahead events: %d, want %d: %+v", n, b2i(tc.warning), evs)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
