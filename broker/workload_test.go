package broker

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/store"
)

func TestAddWorkloadValidation(t *testing.T) {
	b, _ := newCacheBroker(t, 100)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := func(mod func(*store.Workload)) store.Workload {
		w := store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{1000}}
		if mod != nil {
			mod(&w)
		}
		return w
	}
	for _, tc := range []struct {
		name    string
		w       store.Workload
		pin     bool
		wantErr string // "" = accepted
	}{
		{"uid only", base(nil), false, ""},
		{"unit only", base(func(w *store.Workload) { w.UIDs, w.Unit = nil, "scavio-mcp.service" }), false, ""},
		{"user manager's unit", base(func(w *store.Workload) { w.Unit = "user@1000.service:mcp.service" }), false, ""},
		{"no uid gid or unit", base(func(w *store.Workload) { w.UIDs = nil; w.Exe = self }), false, "at least one of --uid, --gid or --unit"},
		{"bad name", base(func(w *store.Workload) { w.Name = "Bad Name" }), false, "workload name"},
		{"unknown tool", base(func(w *store.Workload) { w.Tools = []string{"nope"} }), false, "unknown tool"},
		{"no tools", base(func(w *store.Workload) { w.Tools = nil }), false, "at least one tool"},
		{"relative exe", base(func(w *store.Workload) { w.Exe = "bin/x" }), false, "absolute path"},
		{"pin without exe", base(nil), true, "--pin-exe needs --exe"},
		{"pin and digest", base(func(w *store.Workload) { w.Exe, w.ExeSHA256 = self, strings.Repeat("a", 64) }), true, "not both"},
		{"bad digest", base(func(w *store.Workload) { w.ExeSHA256 = "xyz" }), false, "64 lowercase hex"},
		{"bad unit", base(func(w *store.Workload) { w.Unit = "foo" }), false, "systemd unit"},
		{"ttl over max", base(func(w *store.Workload) { w.TTL = 48 * time.Hour }), false, "exceeds the maximum"},
		{"pin", base(func(w *store.Workload) { w.Name, w.Exe = "pinned", self }), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := b.AddWorkload(context.Background(), tc.w, tc.pin, Caller{UID: 0, Known: true})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got.TTL != DefaultWorkloadTTL || (tc.pin && len(got.ExeSHA256) != 64) {
					t.Fatalf("stored %+v", got)
				}
				b.RemoveWorkload(context.Background(), got.Name)
				return
			}
			if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want InvalidArgument with %q", err, tc.wantErr)
			}
		})
	}
}

// A caller brokerd cannot pin (no pidfd at accept: StartTime 0) is refused, never guessed.
func TestFetchTokenNeedsAPinnedCaller(t *testing.T) {
	b, _ := newCacheBroker(t, 100)
	if _, err := b.AddWorkload(context.Background(), store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{uint32(os.Getuid())}}, false, Caller{Known: true}); err != nil {
		t.Fatal(err)
	}
	_, _, err := b.FetchToken(context.Background(), Caller{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Known: true}, nil)
	if !errors.Is(err, ErrPermissionDenied) || !strings.Contains(err.Error(), "could not pin") {
		t.Fatalf("got %v", err)
	}
}

// startBound starts a process that lives until the test kills it and mints a token bound to it,
// as `brokerctl exec` does (MintBoundToProcess), so brokerd watches it.
func startBound(t *testing.T, b *Broker) (raw string, rec store.Token, cmd *exec.Cmd, caller Caller) {
	t.Helper()
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no pidfds for brokerd to watch processes with")
	}
	cmd = exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep binary:", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	st, err := peercred.StartTime(int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	caller = Caller{Known: true, UID: uint32(os.Geteuid()), PID: int32(cmd.Process.Pid), StartTime: st}
	raw, rec, err = b.MintBoundToProcess(context.Background(), MintRequest{Tools: []string{"web_search"}, TTL: time.Hour}, caller)
	if err != nil {
		t.Fatal(err)
	}
	return raw, rec, cmd, caller
}

// waitUntil polls cond, for state another goroutine changes without a signal to wait on.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // a hang guard, not a timing assumption
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// auditEvents counts the audit records of event about token id.
func auditEvents(t *testing.T, st *store.Store, event, id string) int {
	t.Helper()
	recs, err := st.ListAudit(0, time.Time{}, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Event == event && r.TokenID == id {
			n++
		}
	}
	return n
}

// A process-bound token whose process exits while its revocation cannot be written (the audit
// log, which takes the revocation in the same commit, is failing: a full disk) is refused at once
// and its revocation is retried on brokerd's clock until it lands with its record; if brokerd
// stops first, the next start revokes it (with its own record).
func TestProcessExitRevokeIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name    string
		restart bool // brokerd stops before the fault clears
	}{
		{"lands once the write succeeds", false},
		{"brokerd stops first, the next start revokes it", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newCacheBroker(t, 100)
			t.Cleanup(b.StopWatching)
			raw, rec, cmd, caller := startBound(t, b)
			if _, err := b.Authenticate(context.Background(), raw, caller); err != nil {
				t.Fatalf("token refused while its process lives: %v", err)
			}
			b.store.InjectAuditFailure(errors.New("no space left on device"))
			cmd.Process.Kill()
			cmd.Wait()

			// Two attempts fail: each waits on the clock for the next (Advance fires the first).
			waitUntil(t, "the first retry to be scheduled", func() bool { return clk.Waiting() == 1 })
			clk.Advance(revokeRetryMin)
			waitUntil(t, "the second retry to be scheduled", func() bool { return clk.Waiting() == 1 })
			if got, err := b.store.GetToken(rec.ID); err != nil || got.Revoked {
				t.Fatalf("stored token while its revocation fails: revoked=%v err=%v", got.Revoked, err)
			}
			_, err := b.Authenticate(context.Background(), raw, caller)
			if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "process it was bound to exited") {
				t.Fatalf("token of an exited process while its revocation is pending: %v, want refused", err)
			}
			if got := b.WatchedTokens(); got != 1 {
				t.Fatalf("%d tokens watched while the revocation is pending, want 1 (it keeps its place)", got)
			}

			event := EventProcessExit
			if tc.restart {
				b.StopWatching() // returns once the retry gave up
				b.store.InjectAuditFailure(nil)
				if got, err := b.store.GetToken(rec.ID); err != nil || got.Revoked {
					t.Fatalf("stored token after the stop: revoked=%v err=%v", got.Revoked, err)
				}
				n, pending, err := b.RevokeProcessBound(context.Background())
				if err != nil || n != 1 || pending != 0 {
					t.Fatalf("revoke at start: %d tokens, %d pending, %v; want 1, 0", n, pending, err)
				}
				event = EventRestartRevoke
			} else {
				b.store.InjectAuditFailure(nil)
				clk.Advance(2 * revokeRetryMin)
				waitUntil(t, "the revocation to land and give the place back", func() bool { return b.WatchedTokens() == 0 })
			}
			if got, err := b.store.GetToken(rec.ID); err != nil || !got.Revoked {
				t.Fatalf("stored token: revoked=%v err=%v, want revoked", got.Revoked, err)
			}
			if n := auditEvents(t, b.store, event, rec.ID); n != 1 {
				t.Fatalf("%d %s records for the token, want 1", n, event)
			}
			if _, err := b.Authenticate(context.Background(), raw, caller); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("revoked token: %v, want refused", err)
			}
		})
	}
}

// The revocations at start are committed with their records: one that cannot be written (a full
// disk) is not made, yet brokerd starts (as on any full disk) with the token refused at once, and
// the revocation is retried on brokerd's clock until it lands with its record; an admin's revoke
// meanwhile ends the retry, as does brokerd stopping.
func TestRestartRevokeCommitsWithItsRecord(t *testing.T) {
	for _, tc := range []struct {
		name string
		then string // "lands", "admin revokes", "stops"
	}{
		{"the retry lands once the write succeeds", "lands"},
		{"an admin revokes it meanwhile", "admin revokes"},
		{"brokerd stops first", "stops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newCacheBroker(t, 100)
			t.Cleanup(b.StopWatching)
			r := MintRequest{Tools: []string{"web_search"}, TTL: time.Hour, BindProcess: true}
			raw, rec, err := b.MintToken(context.Background(), r, Caller{Known: true})
			if err != nil {
				t.Fatal(err)
			}
			b.store.InjectAuditFailure(errors.New("no space left on device"))
			if n, pending, err := b.RevokeProcessBound(context.Background()); err != nil || n != 0 || pending != 1 {
				t.Fatalf("revoke at start with the audit log failing: %d revoked, %d pending, %v; want 0, 1, nil (brokerd starts)", n, pending, err)
			}
			if got, err := b.store.GetToken(rec.ID); err != nil || got.Revoked {
				t.Fatalf("token revoked without its record: revoked=%v err=%v", got.Revoked, err)
			}
			if _, err := b.Authenticate(context.Background(), raw, Caller{Known: true}); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("token while its revocation at start is pending: %v, want refused", err)
			}
			waitUntil(t, "the retry to be scheduled", func() bool { return clk.Waiting() == 1 })
			b.store.InjectAuditFailure(nil)
			want := 1 // restart-revoke records for the token
			switch tc.then {
			case "lands":
				clk.Advance(revokeRetryMin)
				waitUntil(t, "the revocation to land", func() bool {
					got, err := b.store.GetToken(rec.ID)
					return err == nil && got.Revoked
				})
			case "admin revokes":
				if _, err := b.RevokeToken(context.Background(), rec.ID); err != nil {
					t.Fatal(err)
				}
				want = 0
			case "stops":
				b.StopWatching() // returns once the retry gave up
				if got, err := b.store.GetToken(rec.ID); err != nil || got.Revoked {
					t.Fatalf("stored token after the stop: revoked=%v err=%v", got.Revoked, err)
				}
				// The next start (the same call again) revokes it.
				if n, pending, err := b.RevokeProcessBound(context.Background()); err != nil || n != 1 || pending != 0 {
					t.Fatalf("next start: %d revoked, %d pending, %v; want 1, 0", n, pending, err)
				}
			}
			b.StopWatching()
			if got, err := b.store.GetToken(rec.ID); err != nil || !got.Revoked {
				t.Fatalf("token: revoked=%v err=%v, want revoked", got.Revoked, err)
			}
			if n := auditEvents(t, b.store, EventRestartRevoke, rec.ID); n != want {
				t.Fatalf("%d %s records, want %d", n, EventRestartRevoke, want)
			}
			if _, err := b.Authenticate(context.Background(), raw, Caller{Known: true}); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("revoked token: %v, want refused", err)
			}
		})
	}
}
