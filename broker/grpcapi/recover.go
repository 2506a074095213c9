package grpcapi

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/broker"
)

// A panic on a handler goroutine ends the process unless something on that goroutine recovers it:
// grpc-go does not. These interceptors make a bug in one call's handler (or in an interceptor
// inside them) fail that call with INTERNAL, logged without the panic's value (broker.Recovered),
// instead of ending brokerd and every other caller's call with it. NewServer puts one pair
// outermost (a panic in the auditor or the authorizer) and one innermost (around the service
// method, so the auditor still records the call, with code Internal). The method is logged bounded
// (boundedMethod): for an unknown method it is whatever string the caller sent.

func recoverUnary(b *broker.Broker, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if v := recover(); v != nil {
				method := boundedMethod(info.FullMethod)
				resp, err = nil, toStatus(log, method, b.Recovered(v, method))
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(b *broker.Broker, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if v := recover(); v != nil {
				method := boundedMethod(info.FullMethod)
				err = toStatus(log, method, b.Recovered(v, method))
			}
		}()
		return handler(srv, ss)
	}
}
