package grpcapi

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
)

// refusedEarly audits credbroker calls that gRPC refuses before any interceptor runs, so the
// auditor never sees them: a request that does not decode (a string field that is not valid
// UTF-8 is refused by protobuf with Internal), one over MaxMessageSize, a method that does not
// exist. They change nothing, so their record is written after gRPC has answered, not before.
type refusedEarly struct {
	b   *broker.Broker
	log *slog.Logger
}

// rpcMark travels in a call's context from TagRPC to the auditor, which sets reached.
type rpcMark struct {
	method  string
	start   time.Time
	reached atomic.Bool
}

type rpcMarkKey struct{}

// markReached tells refusedEarly that the auditor has the call.
func markReached(ctx context.Context) {
	if m, ok := ctx.Value(rpcMarkKey{}).(*rpcMark); ok {
		m.reached.Store(true)
	}
}

func (r refusedEarly) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if !audited(info.FullMethodName) {
		return ctx
	}
	return context.WithValue(ctx, rpcMarkKey{}, &rpcMark{method: info.FullMethodName, start: time.Now()})
}

func (r refusedEarly) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.Error == nil {
		return
	}
	m, ok := ctx.Value(rpcMarkKey{}).(*rpcMark)
	if !ok || m.reached.Load() {
		return
	}
	rec := broker.CallRecord{
		Method: m.method, Caller: callerFrom(ctx), Code: status.Code(end.Error).String(),
		Latency: time.Since(m.start), Info: &broker.CallInfo{Event: "refused-before-handler"},
	}
	if err := r.b.RecordCall(ctx, rec); err != nil {
		r.log.Error("audit record of a call refused before its handler not written", "method", m.method, "err", err)
	}
}

func (refusedEarly) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (refusedEarly) HandleConn(context.Context, stats.ConnStats)                       {}
