// Package grpcapi is the gRPC edge of brokerd: one adapter per service, the admin authorization
// interceptor, and the single place where domain errors become gRPC status codes.
package grpcapi

import (
	"log/slog"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// MaxMessageSize bounds every request: the largest legitimate one (an 8 KiB credential) is far
// smaller, and a bound keeps a misbehaving client from making the daemon buffer megabytes.
const MaxMessageSize = 64 << 10

// Options configure NewServer.
type Options struct {
	Admins Admins
	Logger *slog.Logger
	// NoReflection disables the reflection service (it exposes the schema only, no data).
	NoReflection bool
	// Extra server options (tests use them to swap the transport credentials).
	ServerOptions []grpc.ServerOption
	// UnaryInterceptors wrap every unary call, outside the auditor and authorization, so they see
	// the code the client got (brokerd's metrics use this).
	UnaryInterceptors []grpc.UnaryServerInterceptor
}

// NewServer builds a gRPC server with both credbroker services, health and reflection registered.
// The health server starts SERVING for every service; the daemon flips it on shutdown.
func NewServer(b *broker.Broker, o Options) (*grpc.Server, *Health) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	opts := append([]grpc.ServerOption{
		grpc.Creds(peercred.TransportCredentials()),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		// Reuse handler goroutines instead of growing a fresh stack per call (stack copying was
		// 7% of brokerd's CPU at 64 concurrent calls; see BENCHMARKS.md).
		grpc.NumStreamWorkers(64),
		grpc.ChainUnaryInterceptor(o.UnaryInterceptors...),
		// The auditor runs before authorization so refused calls are recorded too.
		grpc.ChainUnaryInterceptor(auditor{b, o.Logger}.unary, o.Admins.unary),
		grpc.ChainStreamInterceptor(auditor{b, o.Logger}.stream, o.Admins.stream),
	}, o.ServerOptions...)
	g := grpc.NewServer(opts...)
	// Requests that do not decode are refused before the interceptors; audit them too.
	g.RegisterService(auditedDecoding(&pb.SearchService_ServiceDesc, b, o.Logger), &SearchService{b: b, log: o.Logger})
	g.RegisterService(auditedDecoding(&pb.AdminService_ServiceDesc, b, o.Logger), &AdminService{b: b, log: o.Logger})
	hs := newHealth()
	healthpb.RegisterHealthServer(g, hs)
	for _, name := range []string{"", pb.SearchService_ServiceDesc.ServiceName, pb.AdminService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	if !o.NoReflection {
		reflection.Register(g)
	}
	return g, hs
}
