package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// fakeBroker implements both services just enough to exercise the client.
type fakeBroker struct {
	credbrokerv1.UnimplementedSearchServiceServer
	credbrokerv1.UnimplementedAdminServiceServer

	mu       sync.Mutex
	authz    [][]string // authorization metadata of every call
	pageReqs []*credbrokerv1.ListTokensRequest
	tokens   []*credbrokerv1.TokenInfo
	err      error // returned by Status when set
}

func (f *fakeBroker) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authz = append(f.authz, md.Get("authorization"))
}

func (f *fakeBroker) Search(ctx context.Context, req *credbrokerv1.SearchRequest) (*credbrokerv1.SearchResponse, error) {
	f.record(ctx)
	return &credbrokerv1.SearchResponse{
		Tool:              req.GetTool(),
		CredentialVersion: 3,
		Results:           []*credbrokerv1.SearchResult{{Title: "t", Url: "https://example.com", Position: 1}},
	}, nil
}

func (f *fakeBroker) WhoAmI(ctx context.Context, _ *credbrokerv1.WhoAmIRequest) (*credbrokerv1.WhoAmIResponse, error) {
	f.record(ctx)
	return &credbrokerv1.WhoAmIResponse{TokenId: "tok1", Tools: []string{"web_search"}}, nil
}

func (f *fakeBroker) PutCredential(ctx context.Context, req *credbrokerv1.PutCredentialRequest) (*credbrokerv1.PutCredentialResponse, error) {
	f.record(ctx)
	if string(req.GetValue()) != "s3cret" {
		return nil, status.Error(codes.InvalidArgument, "unexpected value")
	}
	return &credbrokerv1.PutCredentialResponse{Credential: &credbrokerv1.Credential{Name: req.GetName(), Version: 1, CreatedAt: timestamppb.Now()}}, nil
}

func (f *fakeBroker) DeleteCredential(ctx context.Context, req *credbrokerv1.DeleteCredentialRequest) (*credbrokerv1.DeleteCredentialResponse, error) {
	f.record(ctx)
	return nil, status.Errorf(codes.NotFound, "credential %q not found", req.GetName())
}

func (f *fakeBroker) ListTokens(ctx context.Context, req *credbrokerv1.ListTokensRequest) (*credbrokerv1.ListTokensResponse, error) {
	f.record(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pageReqs = append(f.pageReqs, proto.Clone(req).(*credbrokerv1.ListTokensRequest))
	// Pages of 2 regardless of the requested size, so a handful of tokens spans several pages.
	start := 0
	if req.GetPageToken() != "" {
		if _, err := fmt.Sscanf(req.GetPageToken(), "p%d", &start); err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
	}
	end := min(start+2, len(f.tokens))
	resp := &credbrokerv1.ListTokensResponse{Tokens: f.tokens[start:end]}
	if end < len(f.tokens) {
		resp.NextPageToken = fmt.Sprintf("p%d", end)
	}
	return resp, nil
}

func (f *fakeBroker) Status(ctx context.Context, _ *credbrokerv1.StatusRequest) (*credbrokerv1.StatusResponse, error) {
	f.record(ctx)
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &credbrokerv1.StatusResponse{Version: "test"}, nil
}

// startBroker serves f on a Unix socket in a temporary directory and returns the socket path.
func startBroker(t *testing.T, f *fakeBroker) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "b.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	credbrokerv1.RegisterSearchServiceServer(srv, f)
	credbrokerv1.RegisterAdminServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return sock
}

func newClient(t *testing.T, sock string, opts ...Option) *Client {
	t.Helper()
	c, err := New(sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestTokenSentAsBearer(t *testing.T) {
	f := &fakeBroker{}
	c := newClient(t, startBroker(t, f), WithToken("cbt_abc_def"))
	ctx := testContext(t)

	resp, err := c.Search(ctx, &credbrokerv1.SearchRequest{Tool: "web_search", Query: "q"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCredentialVersion() != 3 || len(resp.GetResults()) != 1 {
		t.Fatalf("unexpected response %v", resp)
	}
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.authz) != 2 {
		t.Fatalf("server saw %d calls, want 2", len(f.authz))
	}
	for i, got := range f.authz {
		if len(got) != 1 || got[0] != "Bearer cbt_abc_def" {
			t.Errorf("call %d: authorization = %q, want [\"Bearer cbt_abc_def\"]", i, got)
		}
	}
}

func TestNoTokenSendsNoAuthorization(t *testing.T) {
	f := &fakeBroker{}
	c := newClient(t, startBroker(t, f))
	cred, err := c.PutCredential(testContext(t), "scavio", []byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if cred.GetName() != "scavio" || cred.GetVersion() != 1 {
		t.Errorf("credential = %v", cred)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.authz) != 1 || len(f.authz[0]) != 0 {
		t.Errorf("authorization metadata = %q, want none", f.authz)
	}
}

func TestNewRejectsTokenWithControlCharacters(t *testing.T) {
	_, err := New(filepath.Join(t.TempDir(), "b.sock"), WithToken("cbt_abc\ndef"))
	if err == nil {
		t.Fatal("New accepted a token with a newline inside")
	}
	if strings.Contains(err.Error(), "cbt_abc") {
		t.Errorf("error %q echoes the token", err)
	}
}

// A token read from a file keeps its trailing newline; it is trimmed, not refused.
func TestTokenFromAFileIsTrimmed(t *testing.T) {
	f := &fakeBroker{}
	c := newClient(t, startBroker(t, f), WithToken(" cbt_abc_def\n"))
	if _, err := c.WhoAmI(testContext(t)); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.authz) != 1 || len(f.authz[0]) != 1 || f.authz[0][0] != "Bearer cbt_abc_def" {
		t.Fatalf("authorization = %q", f.authz)
	}
}

// errorCases is the one table of gRPC codes and the sentinel each must map to.
var errorCases = []struct {
	code codes.Code
	want error
}{
	{codes.Unauthenticated, ErrUnauthenticated},
	{codes.PermissionDenied, ErrPermissionDenied},
	{codes.InvalidArgument, ErrInvalidArgument},
	{codes.OutOfRange, ErrInvalidArgument},
	{codes.NotFound, ErrNotFound},
	{codes.AlreadyExists, ErrAlreadyExists},
	{codes.FailedPrecondition, ErrFailedPrecondition},
	{codes.ResourceExhausted, ErrResourceExhausted},
	{codes.Unavailable, ErrUnavailable},
	{codes.Aborted, ErrUnavailable},
	{codes.DeadlineExceeded, ErrDeadlineExceeded},
	{codes.Canceled, ErrCanceled},
	{codes.Unimplemented, ErrUnimplemented},
	{codes.Internal, ErrInternal},
	{codes.Unknown, ErrInternal},
	{codes.DataLoss, ErrInternal},
}

var allSentinels = []error{
	ErrUnauthenticated, ErrPermissionDenied, ErrInvalidArgument, ErrNotFound, ErrAlreadyExists,
	ErrFailedPrecondition, ErrResourceExhausted, ErrUnavailable, ErrDeadlineExceeded, ErrCanceled,
	ErrUnimplemented, ErrInternal,
}

func checkMapped(t *testing.T, err error, code codes.Code, want error, wantMsg string) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *client.Error", err, err)
	}
	if ce.Code != code {
		t.Errorf("Code = %v, want %v", ce.Code, code)
	}
	if err.Error() != wantMsg {
		t.Errorf("Error() = %q, want %q", err.Error(), wantMsg)
	}
	for _, s := range allSentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(err, %v) = %v, want %v", s, got, s == want)
		}
	}
	if got := status.Code(err); got != code {
		t.Errorf("status.Code(err) = %v, want %v", got, code)
	}
}

func TestEveryCodeMapsToItsSentinel(t *testing.T) {
	// Over the wire, through a real server: the message arrives without "rpc error: code = …".
	f := &fakeBroker{}
	c := newClient(t, startBroker(t, f))
	for _, tc := range errorCases {
		t.Run(tc.code.String(), func(t *testing.T) {
			msg := "server says " + tc.code.String()
			f.mu.Lock()
			f.err = status.Error(tc.code, msg)
			f.mu.Unlock()
			_, err := c.Status(testContext(t))
			checkMapped(t, err, tc.code, tc.want, msg)
		})
	}
}

func TestFromStatus(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.code.String(), func(t *testing.T) {
			checkMapped(t, fromStatus(status.Error(tc.code, "m")), tc.code, tc.want, "m")
		})
	}
	t.Run("empty message falls back to the sentinel", func(t *testing.T) {
		checkMapped(t, fromStatus(status.Error(codes.NotFound, "")), codes.NotFound, ErrNotFound, "not found")
	})
	t.Run("unknown code is internal", func(t *testing.T) {
		checkMapped(t, fromStatus(status.Error(codes.Code(99), "m")), codes.Code(99), ErrInternal, "m")
	})
	t.Run("context errors", func(t *testing.T) {
		checkMapped(t, fromStatus(context.Canceled), codes.Canceled, ErrCanceled, "context canceled")
		checkMapped(t, fromStatus(fmt.Errorf("x: %w", context.DeadlineExceeded)), codes.DeadlineExceeded, ErrDeadlineExceeded, "x: context deadline exceeded")
	})
	t.Run("nil", func(t *testing.T) {
		if err := fromStatus(nil); err != nil {
			t.Fatalf("fromStatus(nil) = %v", err)
		}
	})
}

func TestServerMessageReachesCaller(t *testing.T) {
	c := newClient(t, startBroker(t, &fakeBroker{}))
	err := c.DeleteCredential(testContext(t), "nope")
	checkMapped(t, err, codes.NotFound, ErrNotFound, `credential "nope" not found`)
}

func TestUnimplementedCall(t *testing.T) {
	c := newClient(t, startBroker(t, &fakeBroker{}))
	_, err := c.RevokeToken(testContext(t), "x")
	if !errors.Is(err, ErrUnimplemented) {
		t.Fatalf("err = %v, want ErrUnimplemented", err)
	}
}

func TestListAllTokensFollowsPages(t *testing.T) {
	f := &fakeBroker{}
	for i := range 5 {
		f.tokens = append(f.tokens, &credbrokerv1.TokenInfo{Id: fmt.Sprintf("t%d", i)})
	}
	c := newClient(t, startBroker(t, f))

	got, err := c.ListAllTokens(testContext(t), true)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tok := range got {
		ids = append(ids, tok.GetId())
	}
	if strings.Join(ids, ",") != "t0,t1,t2,t3,t4" {
		t.Errorf("ids = %v", ids)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	var pages []string
	for _, r := range f.pageReqs {
		if !r.GetIncludeExpired() {
			t.Errorf("request %v lost include_expired", r)
		}
		pages = append(pages, r.GetPageToken())
	}
	if strings.Join(pages, ",") != ",p2,p4" {
		t.Errorf("page tokens requested = %q, want [\"\" p2 p4]", pages)
	}
}

func TestListAllTokensEmpty(t *testing.T) {
	c := newClient(t, startBroker(t, &fakeBroker{}))
	got, err := c.ListAllTokens(testContext(t), false)
	if err != nil || len(got) != 0 {
		t.Fatalf("ListAllTokens = %v, %v; want nothing", got, err)
	}
}

func TestUnreachableSocket(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, sock string)
		cause string
	}{
		{"missing", func(*testing.T, string) {}, "no such file or directory"},
		{"stale", func(t *testing.T, sock string) {
			// A socket file nobody listens on, as a crashed daemon leaves behind.
			lis, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			lis.(*net.UnixListener).SetUnlinkOnClose(false)
			lis.Close()
		}, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "b.sock")
			tc.setup(t, sock)
			c := newClient(t, sock)
			_, err := c.Status(testContext(t))
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("err = %v, want ErrUnavailable", err)
			}
			want := "cannot reach brokerd at " + sock + ": is it running? ("
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.cause) {
				t.Errorf("err = %q, want prefix %q and cause %q", err, want, tc.cause)
			}
		})
	}
}

func TestServerUnavailableIsNotUnreachable(t *testing.T) {
	// brokerd returns Unavailable itself when the upstream is down; that must keep its message.
	f := &fakeBroker{err: status.Error(codes.Unavailable, "upstream is down")}
	c := newClient(t, startBroker(t, f))
	_, err := c.Status(testContext(t))
	checkMapped(t, err, codes.Unavailable, ErrUnavailable, "upstream is down")
}

func TestReachableAfterDaemonStarts(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "b.sock")
	c := newClient(t, sock, WithDialOptions(grpc.WithConnectParams(fastReconnect)))
	if _, err := c.Status(testContext(t)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("before start: err = %v, want ErrUnavailable", err)
	}

	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	credbrokerv1.RegisterAdminServiceServer(srv, &fakeBroker{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	// WaitForReady rides out the reconnect backoff.
	if _, err := c.admin.Status(testContext(t), &credbrokerv1.StatusRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("after start: %v", err)
	}
	if _, err := c.Status(testContext(t)); err != nil {
		t.Fatalf("after start: %v", err)
	}
}

func TestNewUsesDefaultSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "b.sock")
	t.Setenv("CREDBROKER_SOCKET", sock)
	c := newClient(t, "")
	if c.Socket() != sock {
		t.Errorf("Socket() = %q, want %q", c.Socket(), sock)
	}
}

func TestNewMakesPathAbsolute(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c := newClient(t, "b.sock")
	if want := filepath.Join(dir, "b.sock"); c.Socket() != want {
		t.Errorf("Socket() = %q, want %q", c.Socket(), want)
	}
}

func TestDefaultSocket(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		euid, uid int
		want      string
	}{
		{"explicit wins over everything", map[string]string{"CREDBROKER_SOCKET": "/x/s.sock", "RUNTIME_DIRECTORY": "/run/credbroker", "XDG_RUNTIME_DIR": "/run/user/1000"}, 0, 0, "/x/s.sock"},
		{"systemd runtime directory", map[string]string{"RUNTIME_DIRECTORY": "/run/credbroker", "XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, 1000, "/run/credbroker/broker.sock"},
		{"systemd runtime directory list", map[string]string{"RUNTIME_DIRECTORY": "/run/a:/run/b"}, 0, 0, "/run/a/broker.sock"},
		{"root", map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, 0, 0, "/run/credbroker/broker.sock"},
		{"user with XDG_RUNTIME_DIR", map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, 1000, "/run/user/1000/credbroker/broker.sock"},
		{"user without XDG_RUNTIME_DIR", nil, 1000, 1000, "/run/user/1000/credbroker/broker.sock"},
		{"setuid binary uses the real uid for /run/user", nil, 1001, 1000, "/run/user/1000/credbroker/broker.sock"},
		{"empty values count as unset", map[string]string{"CREDBROKER_SOCKET": "", "RUNTIME_DIRECTORY": "", "XDG_RUNTIME_DIR": ""}, 1000, 1000, "/run/user/1000/credbroker/broker.sock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			if got := defaultSocket(getenv, tc.euid, tc.uid); got != tc.want {
				t.Errorf("defaultSocket = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDefaultSocketEnvPrecedence(t *testing.T) {
	// Through the real environment, with whatever uid the tests run as.
	t.Setenv("CREDBROKER_SOCKET", "/x/s.sock")
	t.Setenv("RUNTIME_DIRECTORY", "/run/rd")
	t.Setenv("XDG_RUNTIME_DIR", "/run/xdg")
	if got := DefaultSocket(); got != "/x/s.sock" {
		t.Errorf("with CREDBROKER_SOCKET: %q", got)
	}
	t.Setenv("CREDBROKER_SOCKET", "")
	if got := DefaultSocket(); got != "/run/rd/broker.sock" {
		t.Errorf("with RUNTIME_DIRECTORY: %q", got)
	}
	t.Setenv("RUNTIME_DIRECTORY", "")
	want := "/run/xdg/credbroker/broker.sock"
	if os.Geteuid() == 0 {
		want = "/run/credbroker/broker.sock"
	}
	if got := DefaultSocket(); got != want {
		t.Errorf("with XDG_RUNTIME_DIR only: %q, want %q", got, want)
	}
}

// fastReconnect keeps the reconnect backoff short so the test does not wait out the default second.
var fastReconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond},
	MinConnectTimeout: time.Second,
}

// An answer over the client's receive limit is gRPC's own refusal on this side: it must not read
// as a quota or a spent token (issue 16 §2: it was reported as ResourceExhausted, "quota").
func TestResponseTooLargeIsNotAQuota(t *testing.T) {
	sock := startBroker(t, &fakeBroker{})
	c := newClient(t, sock, WithToken("cbt_x"), WithDialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16))))
	_, err := c.Search(testContext(t), &credbrokerv1.SearchRequest{Tool: "web_search", Query: "q"})
	if !errors.Is(err, ErrResponseTooLarge) {
		t.Fatalf("got %v, want ErrResponseTooLarge", err)
	}
	if errors.Is(err, ErrResourceExhausted) {
		t.Fatalf("%v also reads as ErrResourceExhausted", err)
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "ask for fewer results") {
		t.Fatalf("code %v, message %q", status.Code(err), err)
	}
}
