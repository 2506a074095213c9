package daemon

import (
	"context"
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
