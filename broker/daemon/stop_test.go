package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/logtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
)

// A handler that ignores its cancellation and never returns: gRPC's Stop closes its connection
// but does not end it, and GracefulStop waits for every handler, so the stop used to wait for it
// forever (until systemd's TimeoutStopSec= killed brokerd mid-shutdown). Now stopGracefully
// gives up on it abandonAfter after closing its connection, and says so.
func TestStopAbandonsAHandlerThatNeverReturns(t *testing.T) {
	oldGrace, oldAbandon := drainGrace, abandonAfter
	drainGrace, abandonAfter = 50*time.Millisecond, 50*time.Millisecond
	t.Cleanup(func() { drainGrace, abandonAfter = oldGrace, oldAbandon })

	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) }) // lets the handler (and GracefulStop) end after the test
	entered := make(chan struct{})
	srv := grpc.NewServer()
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Stuck",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Call", Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(new(emptypb.Empty)); err != nil {
				return nil, err
			}
			close(entered)
			<-stuck // ignores its context
			return new(emptypb.Empty), nil
		}}},
	}, struct{}{})
	lis, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go conn.Invoke(context.Background(), "/test.Stuck/Call", new(emptypb.Empty), new(emptypb.Empty))
	<-entered

	var logs logtest.Buffer
	stopped := make(chan struct{})
	go func() {
		stopGracefully(srv, grpcapi.NewDrainer(), time.Now().Add(50*time.Millisecond), slog.New(slog.NewTextHandler(&logs, nil)))
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second): // the bound is ~150 ms; this only catches "never"
		t.Fatalf("stopGracefully still waiting for a handler that never returns\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "stopping without them") {
		t.Fatalf("the abandoned call was not logged:\n%s", logs.String())
	}
}

// A start that fails while a stop is asked for is a clean stop only if the stop caused it.
func TestStoppedWhileStarting(t *testing.T) {
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"interrupted by the stop", stopped, fmt.Errorf("opening the master key: %w", context.Canceled), true},
		{"a real failure as the stop came", stopped, errors.New("database is damaged"), false},
		{"interrupted, no stop", context.Background(), context.Canceled, false},
		{"no error", stopped, nil, false},
	} {
		if got := stoppedWhileStarting(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
