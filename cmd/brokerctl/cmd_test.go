package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// fakeAPI records what brokerctl sends and returns canned answers.
type fakeAPI struct {
	// brokerAPI is nil: a test that reaches a method the fake does not implement panics, which
	// names the method; commands add their methods here as they need them.
	brokerAPI
	socket, token string
	err           error // returned by every call when set

	mint    *credbrokerv1.MintTokenRequest
	search  *credbrokerv1.SearchRequest
	putName string
	putVal  string
	revoked string
	listAll bool

	creds   []*credbrokerv1.Credential
	tokens  []*credbrokerv1.TokenInfo
	results *credbrokerv1.SearchResponse
}

func (f *fakeAPI) Search(_ context.Context, req *credbrokerv1.SearchRequest) (*credbrokerv1.SearchResponse, error) {
	f.search = req
	return f.results, f.err
}

func (f *fakeAPI) PutCredential(_ context.Context, name string, value []byte) (*credbrokerv1.Credential, error) {
	f.putName, f.putVal = name, string(value)
	return &credbrokerv1.Credential{Name: name, Version: 1}, f.err
}

func (f *fakeAPI) RotateCredential(_ context.Context, name string, value []byte) (*credbrokerv1.Credential, error) {
	f.putName, f.putVal = name, string(value)
	return &credbrokerv1.Credential{Name: name, Version: 4}, f.err
}

func (f *fakeAPI) ListCredentials(context.Context) ([]*credbrokerv1.Credential, error) {
	return f.creds, f.err
}

func (f *fakeAPI) DeleteCredential(context.Context, string) error { return f.err }

func (f *fakeAPI) MintToken(_ context.Context, req *credbrokerv1.MintTokenRequest) (*credbrokerv1.MintTokenResponse, error) {
	f.mint = req
	if f.err != nil {
		return nil, f.err
	}
	return &credbrokerv1.MintTokenResponse{
		Token:     "cbt_0123456789abcdef_secret",
		Id:        "0123456789abcdef",
		ExpiresAt: timestamppb.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)),
	}, nil
}

func (f *fakeAPI) ListAllTokens(_ context.Context, includeExpired bool) ([]*credbrokerv1.TokenInfo, error) {
	f.listAll = includeExpired
	return f.tokens, f.err
}

func (f *fakeAPI) RevokeToken(_ context.Context, id string) (*credbrokerv1.TokenInfo, error) {
	f.revoked = id
	return &credbrokerv1.TokenInfo{Id: id, Revoked: true}, f.err
}

func (f *fakeAPI) Status(context.Context) (*credbrokerv1.StatusResponse, error) {
	return &credbrokerv1.StatusResponse{Version: "v1.2.3", Uptime: durationpb.New(90 * time.Second), Tools: []string{"web_search=scavio"}}, f.err
}

func (f *fakeAPI) Close() error { return nil }

type run struct {
	stdout, stderr string
	err            error
}

// runCmd runs brokerctl with args against f, with stdin and environment env.
func runCmd(t *testing.T, f *fakeAPI, stdin string, env map[string]string, args ...string) run {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := newApp(strings.NewReader(stdin), &stdout, &stderr)
	a.getenv = func(k string) string { return env[k] }
	a.dial = func(socket, token string) (brokerAPI, error) {
		f.socket, f.token = socket, token
		return f, nil
	}
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return run{stdout.String(), stderr.String(), err}
}

func TestTokenMintFlags(t *testing.T) {
	uid := func(u uint32) *uint32 { return &u }
	tests := []struct {
		name    string
		args    []string
		want    *credbrokerv1.MintTokenRequest
		wantErr string
	}{
		{
			name: "defaults",
			args: []string{"--tools", "web_search"},
			want: &credbrokerv1.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour)},
		},
		{
			name: "everything",
			args: []string{"--tools", "web_search,google_search", "--ttl", "15m", "--max-uses", "3", "--bind-uid", "1000", "--label", "ci runner"},
			want: &credbrokerv1.MintTokenRequest{Tools: []string{"web_search", "google_search"}, Ttl: durationpb.New(15 * time.Minute), MaxUses: 3, BindUid: uid(1000), Label: "ci runner"},
		},
		{
			name: "bind-uid 0 is a binding",
			args: []string{"--tools", "web_search", "--bind-uid", "0"},
			want: &credbrokerv1.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), BindUid: uid(0)},
		},
		{
			name: "repeated --tools",
			args: []string{"--tools", "a", "--tools=b"},
			want: &credbrokerv1.MintTokenRequest{Tools: []string{"a", "b"}, Ttl: durationpb.New(time.Hour)},
		},
		{
			name: "spaces around tools",
			args: []string{"--tools", " a , b ,"},
			want: &credbrokerv1.MintTokenRequest{Tools: []string{"a", "b"}, Ttl: durationpb.New(time.Hour)},
		},
		{name: "missing --tools", args: []string{"--ttl", "1h"}, wantErr: `required flag(s) "tools" not set`},
		{name: "empty --tools", args: []string{"--tools", ","}, wantErr: "--tools needs at least one tool name"},
		{name: "zero ttl", args: []string{"--tools", "a", "--ttl", "0s"}, wantErr: "--ttl must be positive"},
		{name: "negative ttl", args: []string{"--tools", "a", "--ttl", "-1h"}, wantErr: "--ttl must be positive"},
		{name: "bad ttl", args: []string{"--tools", "a", "--ttl", "soon"}, wantErr: `invalid argument "soon" for "--ttl"`},
		{name: "negative bind-uid", args: []string{"--tools", "a", "--bind-uid", "-1"}, wantErr: `invalid argument "-1" for "--bind-uid"`},
		{name: "bad max-uses", args: []string{"--tools", "a", "--max-uses", "many"}, wantErr: `invalid argument "many" for "--max-uses"`},
		{name: "positional argument", args: []string{"--tools", "a", "extra"}, wantErr: "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAPI{}
			r := runCmd(t, f, "", nil, append([]string{"token", "mint"}, tc.args...)...)
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", r.err, tc.wantErr)
				}
				if f.mint != nil {
					t.Errorf("sent %v despite the error", f.mint)
				}
				return
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !proto.Equal(f.mint, tc.want) {
				t.Errorf("request = %v, want %v", f.mint, tc.want)
			}
			if r.stdout != "cbt_0123456789abcdef_secret\n" {
				t.Errorf("stdout = %q, want the token alone on one line", r.stdout)
			}
			if f.token != "" {
				t.Errorf("admin call sent a token")
			}
		})
	}
}

func TestTokenMintJSON(t *testing.T) {
	r := runCmd(t, &fakeAPI{}, "", nil, "token", "mint", "--tools", "web_search", "--json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	want := map[string]any{"token": "cbt_0123456789abcdef_secret", "id": "0123456789abcdef", "expires_at": "2030-01-02T03:04:05Z"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestCredentialPut(t *testing.T) {
	f := &fakeAPI{}
	r := runCmd(t, f, "s3cret\n", nil, "--socket", "/x/b.sock", "credential", "put", "scavio")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if f.putName != "scavio" || f.putVal != "s3cret" {
		t.Errorf("sent %q=%q", f.putName, f.putVal)
	}
	if f.socket != "/x/b.sock" {
		t.Errorf("socket = %q", f.socket)
	}
	if r.stdout != "stored scavio version 1\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
}

func TestCredentialRotateBothSpellings(t *testing.T) {
	for _, args := range [][]string{{"credential", "rotate", "scavio"}, {"rotate", "scavio"}} {
		f := &fakeAPI{}
		r := runCmd(t, f, "new\r\n", nil, args...)
		if r.err != nil {
			t.Fatalf("%v: %v", args, r.err)
		}
		if f.putVal != "new" || r.stdout != "rotated scavio to version 4\n" {
			t.Errorf("%v: sent %q, stdout %q", args, f.putVal, r.stdout)
		}
	}
}

func TestValueNeverFromArgv(t *testing.T) {
	for _, args := range [][]string{
		{"credential", "put", "scavio", "s3cret"},
		{"credential", "rotate", "scavio", "s3cret"},
		{"rotate", "scavio", "s3cret"},
	} {
		f := &fakeAPI{}
		r := runCmd(t, f, "", nil, args...)
		if r.err == nil || !strings.Contains(r.err.Error(), "never from the command line") {
			t.Errorf("%v: err = %v", args, r.err)
		}
		if r.err != nil && strings.Contains(r.err.Error(), "s3cret") {
			t.Errorf("%v: error echoes the value: %v", args, r.err)
		}
		if f.putName != "" {
			t.Errorf("%v: sent a value", args)
		}
	}
}

func TestCredentialPutEmptyRefused(t *testing.T) {
	f := &fakeAPI{}
	r := runCmd(t, f, "\n", nil, "credential", "put", "scavio")
	if !errors.Is(r.err, errEmptyValue) || f.putName != "" {
		t.Fatalf("err = %v, sent %q", r.err, f.putName)
	}
}

func TestCredentialListJSON(t *testing.T) {
	ts := timestamppb.New(time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC))
	f := &fakeAPI{creds: []*credbrokerv1.Credential{{Name: "scavio", Version: 2, CreatedAt: ts, RotatedAt: ts}}}
	r := runCmd(t, f, "", nil, "credential", "list", "--json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got []credentialJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	want := []credentialJSON{{"scavio", 2, "2026-05-06T07:08:09Z", "2026-05-06T07:08:09Z"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}

	r = runCmd(t, &fakeAPI{}, "", nil, "credential", "list", "--json")
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("no credentials: stdout = %q, want []", r.stdout)
	}
}

func TestTokenList(t *testing.T) {
	now := time.Now()
	f := &fakeAPI{tokens: []*credbrokerv1.TokenInfo{
		{Id: "aaaa", Tools: []string{"web_search"}, ExpiresAt: timestamppb.New(now.Add(time.Hour)), Label: "laptop"},
		{Id: "bbbb", Tools: []string{"a", "b"}, ExpiresAt: timestamppb.New(now.Add(-time.Hour)), MaxUses: 5, Uses: 2},
		{Id: "cccc", Tools: []string{"a"}, ExpiresAt: timestamppb.New(now.Add(time.Hour)), Revoked: true},
		{Id: "dddd", Tools: []string{"a"}, ExpiresAt: timestamppb.New(now.Add(time.Hour)), MaxUses: 1, Uses: 1},
	}}
	r := runCmd(t, f, "", nil, "token", "list", "--all")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !f.listAll {
		t.Error("--all did not ask for expired tokens")
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "ID TOOLS EXPIRES USES LABEL STATE" {
		t.Fatalf("table:\n%s", r.stdout)
	}
	for i, want := range []string{"aaaa web_search * - laptop active", "bbbb a,b * 2/5 - expired", "cccc a * - - revoked", "dddd a * 1/1 - used-up"} {
		got := strings.Fields(lines[i+1])
		w := strings.Fields(want)
		got[2] = "*" // the expiry time
		if strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("row %d = %q, want %q", i, got, w)
		}
	}

	r = runCmd(t, f, "", nil, "token", "list")
	if r.err != nil || f.listAll {
		t.Errorf("without --all: err %v, includeExpired %v", r.err, f.listAll)
	}
}

func TestTokenRevoke(t *testing.T) {
	for _, tc := range []struct{ arg, wantID string }{
		{"0123456789abcdef", "0123456789abcdef"},
		{"cbt_0123456789abcdef_" + strings.Repeat("0", 72), "0123456789abcdef"},
	} {
		f := &fakeAPI{}
		r := runCmd(t, f, "", nil, "token", "revoke", tc.arg)
		if r.err != nil {
			t.Fatal(r.err)
		}
		if f.revoked != tc.wantID || r.stdout != "revoked token "+tc.wantID+"\n" {
			t.Errorf("revoke %s: sent %q, stdout %q", tc.arg, f.revoked, r.stdout)
		}
	}
}

func TestSearch(t *testing.T) {
	raw, _ := structpb.NewStruct(map[string]any{"title": "Go", "extra": "kept"})
	f := &fakeAPI{results: &credbrokerv1.SearchResponse{
		Tool:              "web_search",
		CredentialVersion: 2,
		Results: []*credbrokerv1.SearchResult{
			{Title: "Go \x1b[31mred", Url: "https://go.dev", Snippet: "The Go\nprogramming language", Position: 1, Raw: raw},
			{Title: "Second", Url: "https://example.com/?a=1&b=2", Position: 2},
		},
	}}
	env := map[string]string{"CREDBROKER_TOKEN": " cbt_tok \n"}

	r := runCmd(t, f, "", env, "search", "--num", "2", "golang", "generics")
	if r.err != nil {
		t.Fatal(r.err)
	}
	if f.token != "cbt_tok" {
		t.Errorf("token = %q", f.token)
	}
	want := &credbrokerv1.SearchRequest{Tool: "web_search", Query: "golang generics", NumResults: 2}
	if !proto.Equal(f.search, want) {
		t.Errorf("request = %v, want %v", f.search, want)
	}
	wantOut := "1. Go [31mred\n   https://go.dev\n   The Go programming language\n\n2. Second\n   https://example.com/?a=1&b=2\n\nResults: 2\n"
	if r.stdout != wantOut {
		t.Errorf("stdout = %q, want %q", r.stdout, wantOut)
	}

	r = runCmd(t, f, "", env, "search", "--json", "golang")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got searchJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got.Tool != "web_search" || got.CredentialVersion != 2 || len(got.Results) != 2 ||
		got.Results[0].Raw["extra"] != "kept" || got.Results[1].Raw == nil || got.Results[1].URL != "https://example.com/?a=1&b=2" {
		t.Errorf("json = %+v", got)
	}
}

func TestSearchFlags(t *testing.T) {
	env := map[string]string{"CREDBROKER_TOKEN": "t"}
	tests := []struct {
		name    string
		args    []string
		want    *credbrokerv1.SearchRequest
		wantErr string
	}{
		{
			name: "google options",
			args: []string{"--tool", "google_search", "--search-type", "news", "--country", "us", "--language", "en", "--page", "2", "--device", "desktop", "q"},
			want: &credbrokerv1.SearchRequest{Tool: "google_search", Query: "q", Google: &credbrokerv1.GoogleSearchOptions{SearchType: "news", CountryCode: "us", Language: "en", Page: 2, Device: "desktop"}},
		},
		{name: "google without options", args: []string{"--tool", "google_search", "q"}, want: &credbrokerv1.SearchRequest{Tool: "google_search", Query: "q"}},
		{name: "google option on web_search", args: []string{"--country", "us", "q"}, wantErr: "--country apply to --tool google_search only"},
		{name: "num on google_search", args: []string{"--tool", "google_search", "--num", "3", "q"}, wantErr: "--num applies to --tool web_search only"},
		{name: "no query", args: []string{}, wantErr: "requires at least 1 arg"},
		{name: "blank query", args: []string{" "}, wantErr: "the query is empty"},
		{name: "negative num", args: []string{"--num", "-1", "q"}, wantErr: "--num must be"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeAPI{results: &credbrokerv1.SearchResponse{}}
			r := runCmd(t, f, "", env, append([]string{"search"}, tc.args...)...)
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", r.err, tc.wantErr)
				}
				return
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !proto.Equal(f.search, tc.want) {
				t.Errorf("request = %v, want %v", f.search, tc.want)
			}
		})
	}
}

func TestSearchNeedsTokenFromEnv(t *testing.T) {
	f := &fakeAPI{}
	r := runCmd(t, f, "", nil, "search", "q")
	if r.err == nil || r.err.Error() != "set CREDBROKER_TOKEN to a token from `brokerctl token mint`" {
		t.Fatalf("err = %v", r.err)
	}
	if r := runCmd(t, f, "", nil, "search", "--token", "x", "q"); r.err == nil || !strings.Contains(r.err.Error(), "unknown flag: --token") {
		t.Errorf("--token: err = %v", r.err)
	}
}

func TestStatusJSON(t *testing.T) {
	r := runCmd(t, &fakeAPI{}, "", nil, "status", "--json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var got statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != "v1.2.3" || got.UptimeSeconds != 90 || got.Uptime != "1m30s" || len(got.Tools) != 1 {
		t.Errorf("got %+v", got)
	}
}

func TestGroupCommandTypo(t *testing.T) {
	r := runCmd(t, &fakeAPI{}, "", nil, "token", "lst")
	if r.err == nil || !strings.Contains(r.err.Error(), `unknown command "lst" for "brokerctl token"`) {
		t.Fatalf("err = %v", r.err)
	}
	r = runCmd(t, &fakeAPI{}, "", nil, "token")
	if r.err != nil || !strings.Contains(r.stdout, "mint") {
		t.Errorf("bare group: err %v, stdout %q", r.err, r.stdout)
	}
}

func TestErrorLine(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&client.Error{Code: codes.PermissionDenied, Message: "uid 1000 is not an admin"}, "permission denied: uid 1000 is not an admin"},
		{&client.Error{Code: codes.PermissionDenied, Message: "permission denied: already said"}, "permission denied: already said"},
		{&client.Error{Code: codes.Unauthenticated, Message: "token expired"}, "unauthenticated: token expired"},
		{&client.Error{Code: codes.NotFound, Message: `credential "x" not found`}, `credential "x" not found`},
		{&client.Error{Code: codes.Unavailable, Message: "cannot reach brokerd at /s: is it running? (connect: no such file or directory)"}, "cannot reach brokerd at /s: is it running? (connect: no such file or directory)"},
		{&client.Error{Code: codes.DeadlineExceeded, Message: "context deadline exceeded"}, "timed out: context deadline exceeded"},
		{&client.Error{Code: codes.Canceled, Message: "context canceled"}, "interrupted"},
		{fmt.Errorf("read: %w", context.Canceled), "interrupted"},
		{errors.New("unknown command \"tokn\" for \"brokerctl\"\n\nDid you mean this?\n\ttoken\n"), `unknown command "tokn" for "brokerctl"; Did you mean this? token`},
		{errors.New("line one\nline two"), "line one; line two"},
	}
	for _, tc := range tests {
		if got := errorLine(tc.err); got != tc.want {
			t.Errorf("errorLine(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestPrintable(t *testing.T) {
	in := "a\x1b]0;title\x07b\u202ec\td\n\ne  f"
	if got, want := printable(in), "a]0;titlebc d e f"; got != want {
		t.Errorf("printable = %q, want %q", got, want)
	}
}

// The PROGRAM column comes from the caller's side (its exe path, its self-chosen comm): it must
// not be able to shift columns or reach the terminal as escape sequences, and comm is marked.
func TestAuditProgramColumn(t *testing.T) {
	tests := []struct {
		rec  *credbrokerv1.AuditRecord
		want string
	}{
		{&credbrokerv1.AuditRecord{Pidfd: true, Exe: "/usr/bin/scavio-mcp", Comm: "scavio-mcp"}, "scavio-mcp"},
		{&credbrokerv1.AuditRecord{Pidfd: true, Exe: "/tmp/x\tforged\x1b[2J", Comm: "x"}, "x forged[2J"},
		{&credbrokerv1.AuditRecord{Pidfd: true, Comm: "sshd\n12 2026"}, "[sshd 12 2026]"},
		{&credbrokerv1.AuditRecord{}, "-"},
	}
	for _, tc := range tests {
		if got := program(tc.rec); got != tc.want {
			t.Errorf("program(%v) = %q, want %q", tc.rec, got, tc.want)
		}
	}
}

// A coalesced refusal shows how many calls it stands for; a single call's record does not.
func TestAuditEventColumnShowsCount(t *testing.T) {
	for _, tc := range []struct {
		rec  *credbrokerv1.AuditRecord
		want string
	}{
		{&credbrokerv1.AuditRecord{Event: "no-token", Count: 250}, "no-token ×250"},
		{&credbrokerv1.AuditRecord{Event: "no-token", Count: 1}, "no-token"},
		{&credbrokerv1.AuditRecord{Event: "mint"}, "mint"},
		{&credbrokerv1.AuditRecord{}, "-"},
	} {
		if got := eventText(tc.rec); got != tc.want {
			t.Errorf("eventText(%v) = %q, want %q", tc.rec, got, tc.want)
		}
	}
}
