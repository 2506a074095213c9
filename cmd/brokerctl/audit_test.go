package main

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// watchFake streams canned batches through WatchAudit, or answers Unimplemented like an older
// brokerd, and counts ListAudit polls.
type watchFake struct {
	*fakeAPI
	batches       [][]*credbrokerv1.AuditRecord
	unimplemented bool
	watchReq      *credbrokerv1.WatchAuditRequest
	listed        []*credbrokerv1.ListAuditRequest
	list          []*credbrokerv1.AuditRecord
}

func (f *watchFake) WatchAudit(ctx context.Context, req *credbrokerv1.WatchAuditRequest, fn func([]*credbrokerv1.AuditRecord) error) error {
	f.watchReq = req
	if f.unimplemented {
		return &client.Error{Code: codes.Unimplemented, Message: "unknown method WatchAudit"}
	}
	for _, b := range f.batches {
		if err := fn(b); err != nil {
			return err
		}
	}
	<-ctx.Done() // a follow ends when the user interrupts it
	return &client.Error{Code: codes.Canceled, Message: "context canceled"}
}

func (f *watchFake) ListAudit(_ context.Context, req *credbrokerv1.ListAuditRequest) ([]*credbrokerv1.AuditRecord, error) {
	f.listed = append(f.listed, &credbrokerv1.ListAuditRequest{AfterSeq: req.GetAfterSeq(), Since: req.GetSince(), PageSize: req.GetPageSize()})
	var out []*credbrokerv1.AuditRecord
	for _, r := range f.list {
		if r.GetSeq() > req.GetAfterSeq() {
			out = append(out, r)
		}
	}
	return out, nil
}

func auditRec(seq uint64, method, cred, event string) *credbrokerv1.AuditRecord {
	return &credbrokerv1.AuditRecord{
		Seq: seq, Time: timestamppb.New(time.Date(2026, 12, 2, 22, 0, 0, 0, time.UTC)), PeerKnown: true, Uid: 1000, Pid: 4242,
		Method: method, Code: "OK", Latency: durationpb.New(1234 * time.Microsecond), Credential: cred, CredentialVersion: 3,
		Event: event, Exe: "/usr/local/bin/brokerctl", Pidfd: true,
	}
}

// runFollow runs `brokerctl args...` against f and interrupts it once it has printed wantLines.
func runFollow(t *testing.T, f brokerAPI, wantLines int, args ...string) (stdout, stderr string) {
	t.Helper()
	out, errb := &notifyBuffer{lines: wantLines, done: make(chan struct{})}, &strings.Builder{}
	a := newApp(strings.NewReader(""), out, errb)
	a.dial = func(string, string) (brokerAPI, error) { return f, nil }
	root := newRootCmd(a)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := out.done
	go func() {
		select {
		case <-done:
			cancel() // as Ctrl-C would
		case <-ctx.Done():
		}
	}()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("%v: %v (stderr %q)", args, err, errb.String())
	}
	return out.String(), errb.String()
}

// notifyBuffer closes done once it holds lines lines. Only the command writes to it.
type notifyBuffer struct {
	strings.Builder
	lines  int
	done   chan struct{}
	closed bool
}

func (b *notifyBuffer) Write(p []byte) (int, error) {
	n, err := b.Builder.Write(p)
	if strings.Count(b.String(), "\n") >= b.lines && !b.closed {
		close(b.done)
		b.closed = true
	}
	return n, err
}

// WriteString hides strings.Builder's, which io.WriteString would call instead of Write.
func (b *notifyBuffer) WriteString(s string) (int, error) { return b.Write([]byte(s)) }

// Follow output is printed batch by batch as records arrive, so the columns must line up by
// width, not by looking at all rows first: a long program, method, credential or token is cut
// with "…" and every column starts where the header's does.
func TestAuditFollowColumnsAlign(t *testing.T) {
	long := auditRec(12345678, "/credbroker.v1.AdminService/SetCredentialLimitsButMuchLongerThanAnyRealMethod", strings.Repeat("c", 64), "limits")
	long.Exe, long.TokenId, long.Tool, long.Code = "/opt/"+strings.Repeat("p", 40), strings.Repeat("t", 30), "a_tool_name_that_is_long", "FailedPrecondition"
	f := &watchFake{fakeAPI: &fakeAPI{}, batches: [][]*credbrokerv1.AuditRecord{
		{auditRec(1, "/credbroker.v1.AdminService/WatchAudit", "", "watch")},
		{auditRec(2, "/credbroker.v1.SearchService/Search", "scavio_api_key", ""), long},
		{auditRec(12345679, "/credbroker.v1.AdminService/Status", "", "")},
	}}
	out, _ := runFollow(t, f, 5, "audit", "-f")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("want a header and 4 rows, got:\n%s", out)
	}
	header := lines[0]
	// Every column after the first starts at the same rune offset in every line: the character
	// before it is the separator's space and the column itself does not start with one (values
	// here are left-aligned or fill their column).
	for _, col := range []string{"TIME", "PROGRAM", "METHOD", "TOOL", "TOKEN", "CODE", "CREDENTIAL", "EVENT"} {
		at := utf8.RuneCountInString(header[:strings.Index(header, col)])
		for i, l := range lines[1:] {
			r := []rune(l)
			if len(r) <= at || r[at-1] != ' ' || r[at] == ' ' {
				t.Errorf("row %d: column %s does not start at %d:\n%s\n%s", i+1, col, at, header, l)
			}
		}
	}
	for _, want := range []string{" " + strings.Repeat("p", 15) + "… ", " AdminService/SetCredentialLimit… ", " " + strings.Repeat("c", 23) + "… ",
		" " + strings.Repeat("t", 15) + "… ", " a_tool_name_… "} {
		if !strings.Contains(lines[3], want) {
			t.Errorf("long row lacks the cut value %q:\n%s", want, lines[3])
		}
	}
	if !strings.HasSuffix(lines[3], "  limits") || !strings.Contains(lines[3], "  FailedPrecondition  ") {
		t.Errorf("long row: %s", lines[3])
	}
	if f.watchReq == nil || len(f.listed) != 0 {
		t.Fatalf("follow did not use WatchAudit alone: watch %v, %d ListAudit polls", f.watchReq, len(f.listed))
	}
}

// An older brokerd answers WatchAudit with Unimplemented: follow says so and polls instead.
func TestAuditFollowFallsBackToPolling(t *testing.T) {
	f := &watchFake{fakeAPI: &fakeAPI{}, unimplemented: true, list: []*credbrokerv1.AuditRecord{
		auditRec(1, "/credbroker.v1.AdminService/Status", "", ""), auditRec(2, "/credbroker.v1.AdminService/ListAudit", "", ""),
	}}
	out, stderr := runFollow(t, f, 2, "audit", "-f", "--json", "--poll", "10ms")
	if got := strings.Count(out, "\n"); got != 2 {
		t.Fatalf("want 2 JSON lines, got %d:\n%s", got, out)
	}
	if !strings.Contains(stderr, "polling every 10ms") {
		t.Fatalf("stderr does not say it polls: %q", stderr)
	}
	if len(f.listed) == 0 || f.listed[0].GetAfterSeq() != 0 {
		t.Fatalf("polls: %v", f.listed)
	}
}
