package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Every error a call returns for a gRPC status is an *Error whose Unwrap returns
// one of these, so callers can write errors.Is(err, client.ErrNotFound).
var (
	// ErrUnauthenticated: the token is missing, malformed, unknown, expired or revoked.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the caller is known but not allowed (wrong tool scope, wrong uid, not an
	// admin).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrInvalidArgument: the request itself is wrong; retrying it unchanged will fail again.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the named credential or token does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a credential with that name already exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrFailedPrecondition: the daemon is not in a state to do this (e.g. a tool's credential is
	// not stored yet).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrResourceExhausted: a token's use limit or an upstream quota is spent.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnavailable: brokerd or the upstream cannot be reached right now; retrying may help.
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the call ran out of time.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrCanceled: the caller canceled the call.
	ErrCanceled = errors.New("canceled")
	// ErrUnimplemented: this brokerd does not know the call, usually because it is older than the
	// client.
	ErrUnimplemented = errors.New("unimplemented")
	// ErrInternal: brokerd failed in a way the caller cannot fix.
	ErrInternal = errors.New("internal error")
	// ErrResponseTooLarge: the answer was larger than this client accepts (gRPC's own receive
	// limit). It is not a quota: ask for fewer results, or raise the limit with
	// WithDialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(n))). Its Code is
	// ResourceExhausted, as gRPC reports it.
	ErrResponseTooLarge = errors.New("response too large for this client")
)

// codeSentinels is the one mapping from gRPC codes back to sentinels. Codes brokerd does not use on
// purpose are folded into the nearest sentinel; Error.Code keeps the exact code.
var codeSentinels = map[codes.Code]error{
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.PermissionDenied:   ErrPermissionDenied,
	codes.InvalidArgument:    ErrInvalidArgument,
	codes.OutOfRange:         ErrInvalidArgument,
	codes.NotFound:           ErrNotFound,
	codes.AlreadyExists:      ErrAlreadyExists,
	codes.FailedPrecondition: ErrFailedPrecondition,
	codes.ResourceExhausted:  ErrResourceExhausted,
	codes.Unavailable:        ErrUnavailable,
	codes.Aborted:            ErrUnavailable,
	codes.DeadlineExceeded:   ErrDeadlineExceeded,
	codes.Canceled:           ErrCanceled,
	codes.Unimplemented:      ErrUnimplemented,
	codes.Internal:           ErrInternal,
	codes.Unknown:            ErrInternal,
	codes.DataLoss:           ErrInternal,
}

// Error is a failed call: the gRPC code and the server's message, without the "rpc error: code = …"
// wrapping. Unwrap returns the sentinel for Code.
type Error struct {
	// Code is the gRPC status code the server (or the gRPC runtime) returned.
	Code codes.Code
	// Message is the server's message, meant for a human; never parse it.
	Message string

	// sentinel overrides the one for Code where the code alone would mislead (ErrResponseTooLarge).
	sentinel error
}

// Error returns the server's message, or the sentinel's text if the server sent none.
func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return sentinelFor(e.Code).Error()
}

// Unwrap returns the sentinel for e.Code (ErrResponseTooLarge for gRPC's own size refusal).
func (e *Error) Unwrap() error {
	if e.sentinel != nil {
		return e.sentinel
	}
	return sentinelFor(e.Code)
}

// GRPCStatus lets status.Code and status.FromError keep working on errors this package returns.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// sentinelFor returns the sentinel for code; a code this package does not know is an internal error.
func sentinelFor(code codes.Code) error {
	if s, ok := codeSentinels[code]; ok {
		return s
	}
	return ErrInternal
}

// fromStatus converts an error from a gRPC call into an *Error. Errors that carry no gRPC status
// (rare: the runtime reports nearly everything as a status) keep their type, except context errors,
// which become ErrCanceled / ErrDeadlineExceeded like their status counterparts.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	if st, ok := status.FromError(err); ok {
		if st.Code() == codes.ResourceExhausted && strings.HasPrefix(st.Message(), grpcTooLarge) {
			// gRPC itself refused the answer (brokerd never words a refusal like this): a size
			// limit on this side, not a use limit or a quota.
			return &Error{Code: st.Code(), sentinel: ErrResponseTooLarge,
				Message: "brokerd's answer is larger than this client accepts (" + st.Message() + "); ask for fewer results or raise the client's receive limit"}
		}
		return &Error{Code: st.Code(), Message: st.Message()}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return &Error{Code: codes.Canceled, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: codes.DeadlineExceeded, Message: err.Error()}
	}
	return err
}

// grpcTooLarge starts the message grpc-go gives when a received message is over the call's
// MaxCallRecvMsgSize.
const grpcTooLarge = "grpc: received message larger than max"

// unreachable builds the error for a socket nobody answers on. cause is the dial error, already
// stripped of the path (it is in the message once).
func unreachable(path string, cause error) *Error {
	return &Error{
		Code:    codes.Unavailable,
		Message: fmt.Sprintf("cannot reach brokerd at %s: is it running? (%v)", path, cause),
	}
}
