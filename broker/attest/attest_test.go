package attest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/store"
)

func TestMatch(t *testing.T) {
	const digest = "aa00000000000000000000000000000000000000000000000000000000000000"
	mcp := store.Workload{Name: "mcp", Tools: []string{"web_search"}, UIDs: []uint32{1000}, Exe: "/usr/bin/scavio-mcp", TTL: time.Hour}
	pinned := store.Workload{Name: "pinned", Tools: []string{"web_search"}, UIDs: []uint32{1000}, ExeSHA256: digest, TTL: time.Hour}
	group := store.Workload{Name: "group", Tools: []string{"web_search", "google_search"}, GIDs: []uint32{50}, TTL: time.Hour}
	unit := store.Workload{Name: "unit", Tools: []string{"web_search"}, Unit: "scavio-mcp.service", TTL: time.Hour}
	wide := store.Workload{Name: "wide", Tools: []string{"web_search"}, UIDs: []uint32{1000}, TTL: 2 * time.Hour}
	same := mcp
	same.Name = "mcp2"
	proc := func(uid, gid uint32, groups []uint32, exe, sum, unit string) *Process {
		return &Process{PID: 42, UID: uid, GID: gid, Groups: groups, Exe: exe, ExeSHA256: sum, Unit: unit}
	}
	for _, tc := range []struct {
		name    string
		regs    []store.Workload
		p       *Process
		tools   []string
		want    string // registration name, or "" for a refusal
		wantMsg []string
	}{
		{"uid and exe match", []store.Workload{mcp}, proc(1000, 1000, nil, "/usr/bin/scavio-mcp", "", ""), nil, "mcp", nil},
		{"other uid", []store.Workload{mcp}, proc(1001, 1001, nil, "/usr/bin/scavio-mcp", "", ""), nil, "", []string{"mcp: uid 1001 does not match"}},
		{"other exe", []store.Workload{mcp}, proc(1000, 1000, nil, "/usr/bin/python3", "", ""), nil, "", []string{"exe path /usr/bin/python3"}},
		{"exe unreadable", []store.Workload{mcp}, proc(1000, 1000, nil, "", "", ""), nil, "", []string{"exe path (unreadable by brokerd)"}},
		{"digest matches", []store.Workload{pinned}, proc(1000, 1000, nil, "/x", digest, ""), nil, "pinned", nil},
		{"digest differs", []store.Workload{pinned}, proc(1000, 1000, nil, "/x", strings.Repeat("b", 64), ""), nil, "", []string{"exe digest sha256:bbbb"}},
		{"supplementary group", []store.Workload{group}, proc(7, 7, []uint32{3, 50}, "", "", ""), nil, "group", nil},
		{"primary group", []store.Workload{group}, proc(7, 50, nil, "", "", ""), nil, "group", nil},
		{"no group", []store.Workload{group}, proc(7, 7, []uint32{3}, "", "", ""), nil, "", []string{"gid 7 and groups [3]"}},
		{"unit", []store.Workload{unit}, proc(7, 7, nil, "", "", "scavio-mcp.service"), nil, "unit", nil},
		{"not in the unit", []store.Workload{unit}, proc(7, 7, nil, "", "", "session-3.scope"), nil, "", []string{"unit session-3.scope"}},
		{"tools subset", []store.Workload{group}, proc(7, 50, nil, "", "", ""), []string{"google_search"}, "group", nil},
		{"tool not granted", []store.Workload{mcp}, proc(1000, 1000, nil, "/usr/bin/scavio-mcp", "", ""), []string{"google_search"}, "", []string{"tool google_search not granted"}},
		{"ambiguous", []store.Workload{mcp, wide}, proc(1000, 1000, nil, "/usr/bin/scavio-mcp", "", ""), nil, "", []string{"mcp and wide both match", "different scopes"}},
		{"same scope twice", []store.Workload{mcp, same}, proc(1000, 1000, nil, "/usr/bin/scavio-mcp", "", ""), nil, "mcp", nil},
		{"one of two", []store.Workload{mcp, unit}, proc(1000, 1000, nil, "/usr/bin/scavio-mcp", "", ""), nil, "mcp", nil},
		{"none registered", nil, proc(1000, 1000, nil, "", "", ""), nil, "", []string{"none are registered"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Match(tc.regs, tc.p, tc.tools)
			if tc.want != "" {
				if err != nil || got.Name != tc.want {
					t.Fatalf("got %q, %v; want %q", got.Name, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrNoMatch) {
				t.Fatalf("got %q, %v; want ErrNoMatch", got.Name, err)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
		})
	}
}

// TestMatchHashesOnlyAdmittedCallers: the executable's digest (a read of a file the caller chose,
// of any size) is computed only for a caller every other selector of the registration admits,
// never for a stranger that asks without a token.
func TestMatchHashesOnlyAdmittedCallers(t *testing.T) {
	const digest = "aa00000000000000000000000000000000000000000000000000000000000000"
	regs := []store.Workload{
		{Name: "pinned", Tools: []string{"web_search"}, UIDs: []uint32{1000}, ExeSHA256: digest, TTL: time.Hour},
		{Name: "unit", Tools: []string{"web_search"}, Unit: "scavio-mcp.service", ExeSHA256: digest, TTL: time.Hour},
		{Name: "path", Tools: []string{"web_search"}, GIDs: []uint32{50}, Exe: "/usr/bin/scavio-mcp", ExeSHA256: digest, TTL: time.Hour},
	}
	for _, tc := range []struct {
		name       string
		uid, gid   uint32
		exe, unit  string
		wantHashes int
	}{
		{"stranger", 1001, 1001, "/tmp/huge", "", 0},
		{"group member, other program", 1001, 50, "/tmp/huge", "", 0},
		{"registered uid", 1000, 1000, "/tmp/huge", "", 1},
		{"in the unit", 1001, 1001, "/tmp/huge", "scavio-mcp.service", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hashes := 0
			p := &Process{PID: 42, UID: tc.uid, GID: tc.gid, Exe: tc.exe, Unit: tc.unit,
				digest: func() (string, error) { hashes++; return strings.Repeat("b", 64), nil }}
			if _, err := Match(regs, p, nil); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("want ErrNoMatch, got %v", err)
			}
			if hashes != tc.wantHashes {
				t.Fatalf("executable hashed %d times, want %d", hashes, tc.wantHashes)
			}
		})
	}
}
