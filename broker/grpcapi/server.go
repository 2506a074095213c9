// Package grpcapi is the gRPC edge of brokerd: one adapter per service, the admin authorization
// interceptor, and the single place where domain errors become gRPC status codes.
package grpcapi

import (
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/peercred"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// MaxMessageSize bounds every request: the largest legitimate one (an 8 KiB credential) is far
// smaller, and a bound keeps a misbehaving client from making the daemon buffer megabytes.
const MaxMessageSize = 64 << 10

// Per-connection bounds, so what one connection can make brokerd hold is known (README "Resource
// limits"); how many connections there are is broker/connlimit's business.
const (
	// MaxHeaderListSize bounds a call's header block: a token and a few headers need a few KiB.
	// gRPC's default (16 MiB) let 40 connections with unfinished header blocks hold ~580 MB; over
	// the bound the stream is reset, and far over it the connection is closed.
	MaxHeaderListSize = 16 << 10
	// MaxConcurrentStreams bounds the calls in flight on one connection (as many as the stream
	// workers); a client asking for more waits, client-side, for one to finish.
	MaxConcurrentStreams = 64
	// windowSize is the flow-control window for each stream and connWindowSize for each
	// connection: the request bytes one can make brokerd buffer. Setting them also turns off
	// gRPC's BDP estimation, which could grow a connection's window to 16 MiB.
	windowSize     = MaxMessageSize
	connWindowSize = 4 * MaxMessageSize
	// HandshakeTimeout bounds a new connection's credentials handshake and HTTP/2 preface.
	HandshakeTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a connection with no call in flight for this long (gRPC clients
	// reconnect on their next call).
	DefaultIdleTimeout = 5 * time.Minute
)

// Options configure NewServer.
type Options struct {
	Admins Admins
	Logger *slog.Logger
	// NoReflection disables the reflection service (it exposes the schema only, no data).
	NoReflection bool
	// Extra server options (tests use them to swap the transport credentials).
	ServerOptions []grpc.ServerOption
	// IdleTimeout closes a connection with no call in flight for this long (0: DefaultIdleTimeout).
	IdleTimeout time.Duration
	// UnaryInterceptors wrap every unary call, outside the auditor and authorization, so they see
	// the code the client got (brokerd's metrics use this).
	UnaryInterceptors []grpc.UnaryServerInterceptor
	// Drainer, if set, lets the daemon end in-flight calls with a clean Unavailable at shutdown
	// (see Drainer); it wraps the handlers inside the auditor, so the ended calls are audited.
	Drainer *Drainer
}

// TransportOptions are brokerd's gRPC server options that shape the transport (message and header
// bounds, flow-control windows, keepalive, stream workers): everything but credentials, interceptors
// and handlers. brokerbench's floor serves with the same ones, so brokerd/floor compares like with
// like. idle is the connection idle timeout.
func TransportOptions(idle time.Duration) []grpc.ServerOption {
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.InitialWindowSize(windowSize),
		grpc.InitialConnWindowSize(connWindowSize),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: idle,
			// A peer that stops answering (stopped, not dead: the kernel closes a dead one's
			// socket) while a call is open is dropped after Time+Timeout.
			Time: 2 * time.Minute, Timeout: 20 * time.Second,
		}),
		// Pings cost a write each: a client pinging more often than this is sent GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Reuse handler goroutines instead of growing a fresh stack per call (stack copying was
		// 7% of brokerd's CPU at 64 concurrent calls; see BENCHMARKS.md).
		grpc.NumStreamWorkers(64),
	}
}

// NewServer builds a gRPC server with both credbroker services, health and reflection registered.
// The health server starts SERVING for every service; the daemon flips it on shutdown.
func NewServer(b *broker.Broker, o Options) (*grpc.Server, *Health) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	aud := auditor{b: b, log: o.Logger, known: map[string]bool{}, admins: o.Admins}
	opts := append([]grpc.ServerOption{grpc.Creds(peercred.TransportCredentials())}, TransportOptions(o.IdleTimeout)...)
	opts = append(append(opts,
		grpc.ChainUnaryInterceptor(recoverUnary(b, o.Logger)),
		grpc.ChainStreamInterceptor(recoverStream(b, o.Logger)),
		grpc.ChainUnaryInterceptor(o.UnaryInterceptors...),
		// The auditor runs before authorization so refused calls are recorded too.
		grpc.ChainUnaryInterceptor(aud.unary, o.Admins.unary),
		grpc.ChainStreamInterceptor(aud.stream, o.Admins.stream),
		// A method that does not exist reaches the stream interceptors (so it is audited) and then
		// this handler, instead of a bare Unimplemented from gRPC that nothing records.
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return refuse(codes.Unimplemented, broker.ReasonUnknownMethod, "brokerd has no such method; see proto/credbroker/v1 for the API", 0, nil)
		}),
	), o.ServerOptions...)
	if o.Drainer != nil {
		opts = append(opts, grpc.ChainUnaryInterceptor(o.Drainer.unary), grpc.ChainStreamInterceptor(o.Drainer.stream))
	}
	// Innermost: around the service method itself, so the auditor records a panicked call.
	opts = append(opts, grpc.ChainUnaryInterceptor(recoverUnary(b, o.Logger)), grpc.ChainStreamInterceptor(recoverStream(b, o.Logger)))
	g := grpc.NewServer(opts...)
	hs := newHealth()
	// Requests that do not decode are refused before the interceptors; audit them too.
	g.RegisterService(auditedDecoding(&pb.SearchService_ServiceDesc, b, o.Logger), &SearchService{b: b, log: o.Logger})
	g.RegisterService(auditedDecoding(&pb.AdminService_ServiceDesc, b, o.Logger), &AdminService{b: b, log: o.Logger, stopping: hs.stopping})
	healthpb.RegisterHealthServer(g, hs)
	for _, name := range []string{"", pb.SearchService_ServiceDesc.ServiceName, pb.AdminService_ServiceDesc.ServiceName} {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	if !o.NoReflection {
		reflection.Register(g)
	}
	// Filled before the server serves, read-only afterwards.
	for svc, info := range g.GetServiceInfo() {
		for _, m := range info.Methods {
			aud.known["/"+svc+"/"+m.Name] = true
		}
	}
	return g, hs
}
