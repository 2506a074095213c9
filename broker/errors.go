package broker

import "errors"

// Sentinel errors. Each is mapped to one gRPC code in broker/grpcapi; wrap them with context that
// tells the user what to do.
var (
	// ErrUnauthenticated: the token is missing, malformed, unknown, expired, revoked, spent or bound
	// to another uid.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the token (or caller) is valid but not allowed this call.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrInvalidArgument: the request is malformed or out of limits; nothing was done.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrCredentialMissing: the tool's credential is not stored.
	ErrCredentialMissing = errors.New("credential not configured")
	// ErrKMSUnavailable: the KMS holding the master key did not answer, or failed its self-test;
	// nothing was changed (a re-wrap or migrate needs it; serving does not).
	ErrKMSUnavailable = errors.New("the KMS holding the master key is unavailable")
	// ErrInternal: a bug in brokerd (a panic, recovered) failed this call and only this call; the
	// message says nothing of the call's data, the log has the stack.
	ErrInternal = errors.New("internal error in brokerd")
)
