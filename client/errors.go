package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
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
	// ErrSocketDenied: the caller may not open brokerd's socket (EACCES on it or a directory on
	// its path). Nothing was sent. Retrying will not help until an operator grants access (the
	// message names the group); its Code is PermissionDenied, and it is not brokerd's refusal, so
	// it does not match ErrPermissionDenied (a token's scope).
	ErrSocketDenied = errors.New("permission denied on brokerd's socket")
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
	// From the status's google.rpc.ErrorInfo and RetryInfo, when brokerd sent them.
	reason   string
	metadata map[string]string
	retry    time.Duration // 0: none sent
	st       *status.Status
}

// Reason is brokerd's stable, machine-readable name for the refusal (google.rpc.ErrorInfo.reason
// in domain credbroker.dev: TOKEN_EXPIRED, TOOL_NOT_IN_SCOPE, RATE_LIMITED, ...; README.md lists
// them with who must act). Act on it rather than on Message. It is "" when the error did not come
// from brokerd (a transport failure, an older brokerd).
func (e *Error) Reason() string { return e.reason }

// RetryDelay is how long brokerd says to wait before the same call can succeed
// (google.rpc.RetryInfo), and whether it said: a rate limit's wait, a budget's reset. When ok is
// false, waiting is not known to help.
func (e *Error) RetryDelay() (time.Duration, bool) { return e.retry, e.retry > 0 }

// Metadata is what brokerd says the refused call used: token_id, tool, credential (ids and names,
// never a secret). It may be empty; the map is a copy.
func (e *Error) Metadata() map[string]string { return maps.Clone(e.metadata) }

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
func (e *Error) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Message)
}

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
		return withDetails(&Error{Code: st.Code(), Message: st.Message()}, st)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return &Error{Code: codes.Canceled, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: codes.DeadlineExceeded, Message: err.Error()}
	}
	return err
}

// errorDomain is the ErrorInfo domain of brokerd's refusals; details from any other are ignored.
const errorDomain = "credbroker.dev"

// withDetails copies the ErrorInfo and RetryInfo of st into e.
func withDetails(e *Error, st *status.Status) *Error {
	e.st = st
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == errorDomain && e.reason == "" {
				e.reason, e.metadata = d.GetReason(), d.GetMetadata()
			}
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil && delay.IsValid() && delay.AsDuration() > 0 {
				e.retry = delay.AsDuration()
			}
		}
	}
	return e
}

// grpcTooLarge starts the message grpc-go gives when a received message is over the call's
// MaxCallRecvMsgSize.
const grpcTooLarge = "grpc: received message larger than max"

// unreachable builds the error for a socket nobody answers on. cause is the dial error, already
// stripped of the path (it is in the message once). A socket the caller may not open (EACCES) is
// not a stopped brokerd, and waiting will not fix it: ErrSocketDenied, whose message says whose
// permission is missing, so retry loops stop instead of retrying a permission problem.
func unreachable(path string, cause error) *Error {
	if errors.Is(cause, syscall.EACCES) {
		return &Error{Code: codes.PermissionDenied, Message: socketDenied(path, cause), sentinel: ErrSocketDenied}
	}
	if errors.Is(cause, syscall.EAGAIN) {
		return &Error{
			Code: codes.Unavailable,
			Message: fmt.Sprintf("brokerd at %s is running, but its queue of new connections stayed full until the deadline "+
				"(brokerd overloaded, or a local user connecting in a loop); retry, or ask the operator to check brokerd", path),
		}
	}
	return &Error{
		Code:    codes.Unavailable,
		Message: fmt.Sprintf("cannot reach brokerd at %s: is it running? (%v)", path, cause),
	}
}

// ancestors lists dir and the directories above it, root first.
func ancestors(dir string) []string {
	var out []string
	for {
		out = append([]string{dir}, out...)
		parent := filepath.Dir(dir)
		if parent == dir {
			return out
		}
		dir = parent
	}
}
