package main

// Shared fixtures: a real brokerd (daemon.Run) on a Unix socket in a short temp dir, with a real
// master keyset and bbolt file, and the fake Scavio upstream on loopback.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker/daemon"
	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// testKey is the Scavio key brokerd holds. No output of scavio-mcp may ever contain it.
const testKey = "sk_test_SCAVIO_MCP_5b1e0c9d7a24f3e8"

// binPath is scavio-mcp built once for the package, for the subprocess tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mcp-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "scavio-mcp")
	build := exec.Command("go", "build", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build scavio-mcp:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testBroker is one running brokerd.
type testBroker struct {
	socket string
	fake   *scaviotest.Server
	admin  *client.Client  // no token: admin calls authorize by uid, and brokerd runs as us
	log    *logtest.Buffer // brokerd's log
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startBroker runs brokerd until the test ends. withKey stores testKey as scavio_api_key.
func startBroker(t *testing.T, withKey bool) *testBroker {
	t.Helper()
	// Unix socket paths are limited to ~108 bytes; t.TempDir() names can exceed that.
	dir, err := os.MkdirTemp("", "mcp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	keyset := filepath.Join(dir, "keyset")
	if err := store.NewMasterKeyset(keyset); err != nil {
		t.Fatal(err)
	}
	fake := scaviotest.NewServer(testKey)
	t.Cleanup(fake.Close)

	tb := &testBroker{socket: filepath.Join(dir, "b.sock"), fake: fake, log: &logtest.Buffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Config{
			Socket: tb.socket, DB: filepath.Join(dir, "broker.db"), MasterKeyset: keyset, UpstreamURL: fake.URL,
			ShutdownTimeout: 5 * time.Second, NoReflection: true, Version: "test",
			Logger: slog.New(slog.NewTextHandler(tb.log, nil)),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon.Run: %v", err)
		}
	})

	// Wait for the socket to answer before the first call: a call that fails to connect puts the
	// gRPC client into reconnect backoff, which would cost every test a second.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", tb.socket)
		if err == nil {
			c.Close()
			break
		}
		select {
		case runErr := <-done:
			t.Fatalf("brokerd exited: %v\nlog:\n%s", runErr, tb.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("brokerd not listening: %v\nlog:\n%s", err, tb.log)
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.admin, err = client.New(tb.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.admin.Close() })
	if withKey {
		if _, err := tb.admin.PutCredential(testContext(t), "scavio_api_key", []byte(testKey)); err != nil {
			t.Fatal(err)
		}
	}
	return tb
}

// mint returns a new token for tools and its public id.
func (tb *testBroker) mint(t *testing.T, ttl time.Duration, tools ...string) (token, id string) {
	t.Helper()
	resp, err := tb.admin.MintToken(testContext(t), &credbrokerv1.MintTokenRequest{Tools: tools, Ttl: durationpb.New(ttl), Label: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetToken(), resp.GetId()
}

// mintAndWaitExpiry mints a token with ttl and returns it with a function that waits until
// brokerd's clock (this machine's) has passed its expiry: the event itself, not a guessed sleep.
func (tb *testBroker) mintAndWaitExpiry(t *testing.T, ttl time.Duration, tools ...string) (token string, waitExpired func()) {
	t.Helper()
	resp, err := tb.admin.MintToken(testContext(t), &credbrokerv1.MintTokenRequest{Tools: tools, Ttl: durationpb.New(ttl), Label: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	exp := resp.GetExpiresAt().AsTime()
	return resp.GetToken(), func() {
		for !time.Now().After(exp) {
			time.Sleep(time.Until(exp) + time.Millisecond)
		}
	}
}

// session is an MCP client connected in memory to a scavio-mcp server.
type session struct {
	*mcp.ClientSession
	log *logtest.Buffer // the server's log
}

// connectBackend builds the backend as run does, for socket and token.
func connectBackend(t *testing.T, socket, token string, log *logtest.Buffer) *backend {
	t.Helper()
	b := connect(testContext(t), slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})), socket, token)
	if b.client != nil {
		t.Cleanup(func() { b.client.Close() })
	}
	return b
}

// serve connects an SDK client to newServer(b) over the SDK's in-memory transport.
func serve(t *testing.T, b *backend, log *logtest.Buffer) *session {
	t.Helper()
	ctx := testContext(t)
	srv := newServer(b, slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ct, st := mcp.NewInMemoryTransports()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return &session{ClientSession: cs, log: log}
}

// start is connectBackend then serve, and checks at the end that the token never reached the
// server's log.
func start(t *testing.T, socket, token string) *session {
	t.Helper()
	log := &logtest.Buffer{}
	if token != "" {
		t.Cleanup(func() {
			if strings.Contains(log.String(), token) {
				t.Errorf("server log contains the token:\n%s", log)
			}
		})
	}
	return serve(t, connectBackend(t, socket, token, log), log)
}

func (s *session) toolNames(t *testing.T) []string {
	t.Helper()
	res, err := s.ListTools(testContext(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	return names
}

// call calls a tool; a protocol error fails the test, because every tool failure must be a result.
func (s *session) call(t *testing.T, tool string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	res, err := s.CallTool(testContext(t), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s(%v): protocol error %v", tool, args, err)
	}
	return res
}

// text joins a result's text content.
func text(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// structured decodes a result's structured content.
func structured(t *testing.T, res *mcp.CallToolResult) searchOutput {
	t.Helper()
	raw, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	var out searchOutput
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("structured content %s: %v", raw, err)
	}
	return out
}

// wantToolError checks that res is an isError result whose text contains every want, and no key.
func wantToolError(t *testing.T, res *mcp.CallToolResult, want ...string) {
	t.Helper()
	got := text(res)
	t.Logf("tool error text: %s", got)
	if !res.IsError {
		t.Fatalf("IsError = false, want a tool error; text:\n%s", got)
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("error text does not contain %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, testKey) {
		t.Errorf("error text contains the Scavio key:\n%s", got)
	}
}
