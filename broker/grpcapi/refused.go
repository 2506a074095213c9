package grpcapi

import (
	"context"
	"log/slog"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
)

// auditedDecoding returns a copy of desc whose unary handlers audit a request that does not
// decode. gRPC decodes a request inside the generated handler, before any interceptor runs, so a
// request it cannot decode (a string field that is not valid UTF-8, a message over
// MaxMessageSize) was refused without the auditor seeing it. gRPC answers such a request itself,
// while decoding (Internal for bytes that do not decode, ResourceExhausted for a message that
// is too large), so this record follows the answer rather than preceding it; the refusal changed
// nothing. A valid request pays one small closure (a stats handler cost about 20 allocations a call).
func auditedDecoding(desc *grpc.ServiceDesc, b *broker.Broker, log *slog.Logger) *grpc.ServiceDesc {
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i, m := range d.Methods {
		handler, method := m.Handler, "/"+desc.ServiceName+"/"+m.MethodName
		d.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			return handler(srv, ctx, func(v any) error {
				err := dec(v)
				if err == nil {
					return nil
				}
				return refuseUndecodable(ctx, b, log, method, err)
			}, ic)
		}
	}
	return &d
}

// refuseUndecodable records a request gRPC could not read, with the code gRPC answered it with.
// It needs no token, so it is coalesced like the other refusals (broker/refusals.go).
func refuseUndecodable(ctx context.Context, b *broker.Broker, _ *slog.Logger, method string, err error) error {
	b.RecordRefusal(ctx, broker.CallRecord{Method: method, Caller: callerFrom(ctx), Code: status.Code(err).String()}, broker.RefusedUndecodable)
	st, _ := status.FromError(err)
	reason := broker.ReasonRequestUndecodable
	if st.Code() == codes.ResourceExhausted {
		reason = broker.ReasonRequestTooLarge
	}
	return refuse(st.Code(), reason, st.Message(), 0, nil)
}
