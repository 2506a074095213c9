package grpcapi

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// An idle health watcher must not hold a graceful stop: Shutdown ends Watch streams (after
// telling them NOT_SERVING), so GracefulStop returns instead of waiting for the hard-stop timeout.
func TestHealthShutdownEndsWatchers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := newHealth()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first watch update: %v %v", r, err)
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second): // a liveness bound, not a performance one
		srv.Stop()
		t.Fatal("GracefulStop still waiting for an idle health watcher")
	}
	for {
		r, err := w.Recv()
		if err != nil {
			break // the stream ended
		}
		if r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("watch update after Shutdown: %v", r)
		}
	}
}
