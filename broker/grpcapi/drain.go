package grpcapi

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
)

// Drainer ends in-flight calls with a clean answer when brokerd stops. Without it, a call still
// running at the shutdown timeout (a hung upstream) was cut by grpc.Server.Stop and its caller saw
// a raw transport error. With it, the daemon first cancels every call's context with
// broker.ErrShuttingDown; each handler then returns through the usual path (its use and credits settled
// like any failed call, its audit record written) and the caller gets
// "Unavailable: brokerd is shutting down" while the transport is still open. Stop stays the last
// resort, for a handler that ignores its context.
type Drainer struct {
	mu       sync.Mutex
	draining bool
	calls    map[*drainCall]struct{}
	streams  map[*drainCall]struct{}
	stopping bool
}

type drainCall struct{ cancel context.CancelCauseFunc }

// NewDrainer returns a Drainer to pass in Options.Drainer.
func NewDrainer() *Drainer {
	return &Drainer{calls: map[*drainCall]struct{}{}, streams: map[*drainCall]struct{}{}}
}

// shuttingDown is what a drained caller is told.
var shuttingDown = refuse(codes.Unavailable, broker.ReasonShuttingDown, broker.ErrEndedByShutdown.Error(), 0, nil)

// track derives the call's context, cancelled with broker.ErrShuttingDown by Drain (stream: by Stopping),
// or at once when that has already happened.
func (d *Drainer) track(ctx context.Context, stream bool) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	c := &drainCall{cancel: cancel}
	d.mu.Lock()
	if (stream && d.stopping) || (!stream && d.draining) {
		d.mu.Unlock()
		cancel(broker.ErrShuttingDown)
		return ctx, func() {}
	}
	d.set(stream)[c] = struct{}{}
	d.mu.Unlock()
	return ctx, func() {
		d.mu.Lock()
		delete(d.set(stream), c) // the current set: Drain and Stopping replace them
		d.mu.Unlock()
		cancel(nil)
	}
}

func (d *Drainer) set(stream bool) map[*drainCall]struct{} {
	if stream {
		return d.streams
	}
	return d.calls
}

func (d *Drainer) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, done := d.track(ctx, false)
	defer done()
	resp, err := handler(ctx, req)
	if err != nil && errors.Is(context.Cause(ctx), broker.ErrShuttingDown) {
		return nil, shuttingDown
	}
	return resp, err
}

func (d *Drainer) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, done := d.track(ss.Context(), true)
	defer done()
	err := handler(srv, &drainStream{ServerStream: ss, ctx: ctx})
	if err != nil && errors.Is(context.Cause(ctx), broker.ErrShuttingDown) {
		return shuttingDown
	}
	return err
}

type drainStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *drainStream) Context() context.Context { return s.ctx }

// Stopping ends the streams (followers such as a watch, which would otherwise hold the graceful
// stop for its whole timeout) at the start of a shutdown. Unary calls go on.
func (d *Drainer) Stopping() { d.end(true) }

// Drain ends every in-flight call, and any that starts afterwards, with broker.ErrShuttingDown. It returns
// how many calls it ended.
func (d *Drainer) Drain() int {
	d.Stopping()
	return d.end(false)
}

// end marks streams (or calls) as ended from now on and cancels those in flight.
func (d *Drainer) end(stream bool) int {
	d.mu.Lock()
	set := d.set(stream)
	if stream {
		d.stopping, d.streams = true, map[*drainCall]struct{}{}
	} else {
		d.draining, d.calls = true, map[*drainCall]struct{}{}
	}
	d.mu.Unlock()
	for c := range set {
		c.cancel(broker.ErrShuttingDown)
	}
	return len(set)
}
