package broker

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/credbroker/credbroker/broker/metrics"
)

// Panics off the handlers' goroutines. A search's computation runs on a worker (settle.go), where
// nothing recovers a panic: a bug in code it runs (the upstream client's redaction scanner, the
// answer's decoding) would end brokerd, every caller with it. Instead the computation recovers it
// (upstreamCall.run), fails its call and the callers sharing it through the result cache with
// ErrInternal, and brokerd goes on serving.

// panicked logs a recovered panic once and returns the error the failed call gets. It must be
// called from the deferred function that recovered v, so the stack shows where v was raised.
//
// The log holds a fixed message, v's type and the stack, not v itself: a panic's value can be
// anything the failing code had at hand (an upstream body, a request), and the log must never hold
// a secret or a body. A runtime error (an index out of range, a nil dereference) is the exception:
// its message is built by the runtime from numbers and type names only, and it says what went
// wrong. The stack shows functions, lines and argument words (pointers, lengths), no bytes.
func (b *Broker) panicked(v any) error {
	b.logPanic(v, "a search's computation panicked (a bug in brokerd): that call failed with INTERNAL, brokerd goes on")
	return fmt.Errorf("%w: the search failed on a bug in brokerd (logged, please report it); the upstream may have billed it, retry", ErrInternal)
}

// Recovered is panicked for a panic an edge recovered from one of its handlers (the gRPC server's
// recovery interceptors, grpcapi): logged the same way, counted, and the error that call alone
// gets. method names the call (a registered method name, never request data).
func (b *Broker) Recovered(v any, method string) error {
	b.logPanic(v, "a call's handler panicked (a bug in brokerd): that call failed with INTERNAL, brokerd goes on", "method", method)
	return fmt.Errorf("%w: the call failed on a bug in brokerd (logged, please report it)", ErrInternal)
}

// logPanic counts and logs a recovered panic as panicked describes: never v's value.
func (b *Broker) logPanic(v any, msg string, attrs ...any) {
	metrics.Panics.Inc()
	attrs = append(attrs, "panic_type", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
	if re, ok := v.(runtime.Error); ok {
		attrs = append(attrs, "runtime_error", re.Error())
	}
	b.log.Error(msg, attrs...)
}
