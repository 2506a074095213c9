package grpcapi

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const panicSecret = "sk_live_in_a_panic_value"

// A panic on a handler goroutine fails that call with INTERNAL and leaves brokerd serving: the
// next call, and a call in flight beside it, succeed. The log names the method and the panic's
// type, never its value (which could hold a body or a key).
func TestHandlerPanicFailsOnlyItsCall(t *testing.T) {
	h := newHarnessOpts(t, func(*broker.Config) {}, func(o *Options) {
		o.UnaryInterceptors = append(o.UnaryInterceptors, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if r, ok := req.(*pb.SearchRequest); ok && r.Query == "boom" {
				panic(panicSecret)
			}
			return handler(ctx, req)
		})
	})
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	_, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "boom"})
	requireGRPCStatus(t, err, codes.Internal, "bug in brokerd")
	if strings.Contains(err.Error(), panicSecret) {
		t.Fatalf("the panic's value reached the caller: %v", err)
	}
	if _, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "after the panic"}); err != nil {
		t.Fatalf("the call after a panicked one: %v", err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "handler panicked") || !strings.Contains(logs, pb.SearchService_Search_FullMethodName) {
		t.Errorf("the panic was not logged with its method:\n%s", logs)
	}
	if strings.Contains(logs, panicSecret) {
		t.Errorf("the log holds the panic's value:\n%s", logs)
	}
}

// The innermost pair, around the service method, turns a panic into the call's own INTERNAL
// error, which the auditor outside it then records like any other outcome.
func TestRecoverInterceptors(t *testing.T) {
	h := newHarness(t)
	var log strings.Builder
	lg := slog.New(slog.NewTextHandler(&log, nil))
	_, err := recoverUnary(h.b, lg)(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/m/unary"},
		func(context.Context, any) (any, error) { panic(panicSecret) })
	if status.Code(err) != codes.Internal {
		t.Fatalf("unary: %v, want Internal", err)
	}
	err = recoverStream(h.b, lg)(nil, nil, &grpc.StreamServerInfo{FullMethod: "/m/stream"},
		func(_ any, ss grpc.ServerStream) error { var none []int; _ = none[len(panicSecret)]; return nil })
	if status.Code(err) != codes.Internal {
		t.Fatalf("stream: %v, want Internal", err)
	}
	if !strings.Contains(h.logs.String(), "index out of range") {
		t.Errorf("a runtime error's message (numbers and type names only) should be logged:\n%s", h.logs.String())
	}
	if strings.Contains(h.logs.String()+log.String(), panicSecret) {
		t.Error("a panic's value was logged")
	}
	if !errorsIsInternal(err) {
		t.Errorf("stream error does not carry the INTERNAL reason: %v", err)
	}
}

func errorsIsInternal(err error) bool {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if s, ok := d.(interface{ GetReason() string }); ok && s.GetReason() == broker.ReasonInternal {
			return true
		}
	}
	return false
}
