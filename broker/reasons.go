package broker

import (
	"errors"
	"time"
)

// Domain of every google.rpc.ErrorInfo brokerd sends.
const ErrorDomain = "credbroker.dev"

// Reasons: the stable, machine-readable names of brokerd's refusals (google.rpc.ErrorInfo.reason
// on gRPC, error.code on the HTTP front). A program acts on these, never on a message. Each is
// listed with its gRPC code and who must act in README.md; never rename one, only add.
const (
	ReasonTokenMissing         = "TOKEN_MISSING"
	ReasonTokenInvalid         = "TOKEN_INVALID"
	ReasonTokenExpired         = "TOKEN_EXPIRED"
	ReasonTokenRevoked         = "TOKEN_REVOKED"
	ReasonTokenExhausted       = "TOKEN_EXHAUSTED"
	ReasonTokenBoundToOtherUID = "TOKEN_BOUND_TO_OTHER_UID"
	ReasonToolNotInScope       = "TOOL_NOT_IN_SCOPE"
	ReasonPermissionDenied     = "PERMISSION_DENIED"
	ReasonNotAdmin             = "NOT_ADMIN"
	ReasonInvalidArgument      = "INVALID_ARGUMENT"
	ReasonRequestUndecodable   = "REQUEST_UNDECODABLE"
	ReasonRequestTooLarge      = "REQUEST_TOO_LARGE"
	ReasonUnknownMethod        = "UNKNOWN_METHOD"
	ReasonNotFound             = "NOT_FOUND"
	ReasonAlreadyExists        = "ALREADY_EXISTS"
	ReasonCredentialMissing    = "CREDENTIAL_MISSING"
	ReasonCredentialInvalid    = "CREDENTIAL_INVALID"
	ReasonRawKeyPresented      = "RAW_KEY_PRESENTED"
	ReasonRateLimited          = "RATE_LIMITED"
	ReasonBudgetExhausted      = "BUDGET_EXHAUSTED"
	ReasonCredentialCeiling    = "CREDENTIAL_CEILING_REACHED"
	ReasonUpstreamRejectedKey  = "UPSTREAM_REJECTED_KEY"
	ReasonUpstreamOutOfCredits = "UPSTREAM_OUT_OF_CREDITS"
	ReasonUpstreamRateLimited  = "UPSTREAM_RATE_LIMITED"
	ReasonUpstreamBadRequest   = "UPSTREAM_BAD_REQUEST"
	ReasonUpstreamUnavailable  = "UPSTREAM_UNAVAILABLE"
	ReasonUpstreamTooLarge     = "UPSTREAM_RESPONSE_TOO_LARGE"
	ReasonUpstreamBadResponse  = "UPSTREAM_BAD_RESPONSE"
	ReasonAnswerTooLarge       = "ANSWER_TOO_LARGE"
	ReasonAuditUnavailable     = "AUDIT_UNAVAILABLE"
	ReasonDatabaseUnavailable  = "DATABASE_UNAVAILABLE"
	ReasonDatabaseTampered     = "DATABASE_TAMPERED"
	ReasonOutcomeUnknown       = "OUTCOME_UNKNOWN"
	ReasonShuttingDown         = "SHUTTING_DOWN"
	ReasonDeadlineExceeded     = "DEADLINE_EXCEEDED"
	ReasonCanceled             = "CANCELED"
	ReasonInternal             = "INTERNAL"
	ReasonKMSUnavailable       = "KMS_UNAVAILABLE"
)

// Refusal gives an error the reason a program can act on, and, where waiting helps and brokerd
// knows for how long, the wait. It leaves the message and the errors.Is chain as they were: the
// edge (broker/grpcapi, broker/httpfront) still picks the code from the wrapped sentinel.
type Refusal struct {
	Reason string
	// RetryAfter is how long to wait before the same call can succeed; 0 if unknown or if waiting
	// does not help.
	RetryAfter time.Duration
	Err        error
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// refusal wraps err with reason (and a wait, where one is known).
func refusal(reason string, retryAfter time.Duration, err error) error {
	return &Refusal{Reason: reason, RetryAfter: retryAfter, Err: err}
}

// RefusalOf returns the outermost Refusal in err's chain, if any.
func RefusalOf(err error) (*Refusal, bool) {
	var r *Refusal
	ok := errors.As(err, &r)
	return r, ok
}
