package broker

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

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
