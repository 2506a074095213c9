package client

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker/sockettest"
)

// TestDialWaitsForAFullAcceptQueue: a connect to brokerd's socket while its accept queue is full
// (brokerd busy, or a local user without a token connecting and closing in a loop to keep it
// full) fails at once with EAGAIN on a Unix socket. The client used to give up on it ("cannot
// reach brokerd: is it running?"), so such a loop kept every client out, root's brokerctl too
// (measured: 4 of 5 `brokerctl status` failed under three connect loops of uid 65534). Now it
// waits its turn until the deadline.
func TestDialWaitsForAFullAcceptQueue(t *testing.T) {
	path, lis, fillers := sockettest.FullQueue(t)

	// brokerd starts accepting only once the client has found the queue full.
	busy := make(chan struct{})
	var once sync.Once
	onBusy = func() { once.Do(func() { close(busy) }) }
	t.Cleanup(func() { onBusy = nil })
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(served)
		select {
		case <-busy:
			srv.Serve(lis)
		case <-ended: // the client never waited
		}
	}()
	t.Cleanup(func() {
		close(ended)
		for _, c := range fillers { // else the server waits out their handshake timeout
			c.Close()
		}
		srv.Stop()
		lis.Close()
		<-served
	})

	c, err := New(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	defer func() { t.Logf("health answered after %s", time.Since(start)) }()
	if st, err := c.Health(ctx, ""); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health through a full accept queue: %v %v", st, err)
	}
}
