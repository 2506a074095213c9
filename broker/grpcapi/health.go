package grpcapi

import (
	"context"
	"sync"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Health is grpc's health service with Watch streams that end when Shutdown is called. grpc's
// own Shutdown only reports NOT_SERVING to watchers and leaves their streams open, so a single
// idle watcher (a proxy, a client-side health check) held every graceful stop until its timeout,
// after which the hard stop cut off the calls that were still draining.
type Health struct {
	*health.Server
	stopping chan struct{}
	once     sync.Once
}

func newHealth() *Health { return &Health{Server: health.NewServer(), stopping: make(chan struct{})} }

// Shutdown sets every service NOT_SERVING, tells watchers, then ends their streams.
func (h *Health) Shutdown() {
	h.Server.Shutdown()
	h.once.Do(func() { close(h.stopping) })
}

// Watch is health.Server.Watch until Shutdown.
func (h *Health) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return h.Server.Watch(req, watchStream{stream, ctx})
}

// watchStream is a Watch stream whose context also ends at Shutdown.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }
