package upstream

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Sentinel kinds. An *Error's Kind is always one of these, so callers classify with errors.Is and map
// each kind to one gRPC code at the server edge.
var (
	// ErrRejected: 401/403. The credential is bad or lacks permission; retrying cannot help.
	ErrRejected = errors.New("upstream rejected the credential")
	// ErrInsufficientCredits: 402. The account behind the key is out of credits.
	ErrInsufficientCredits = errors.New("upstream account is out of credits")
	// ErrRateLimited: 429 that could not be retried within the retry budget or the deadline.
	ErrRateLimited = errors.New("upstream rate limit exceeded")
	// ErrUnavailable: 5xx, 408, timeouts, connection and DNS failures.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrBadRequest: 400 and other 4xx the request itself caused.
	ErrBadRequest = errors.New("upstream refused the request as invalid")
	// ErrResponseTooLarge: a 2xx body larger than Config.MaxResponseBytes.
	ErrResponseTooLarge = errors.New("upstream response too large")
	// ErrBadResponse: a 2xx body that is not complete JSON, or a status the client does not expect
	// (1xx, 3xx).
	ErrBadResponse = errors.New("upstream returned a malformed response")
)

// ErrInvalidKey is returned, without contacting the upstream, when the key is empty or holds bytes
// that cannot travel in an HTTP header. It is not an *Error: nothing was sent.
var ErrInvalidKey = errors.New("credential is empty or contains characters not allowed in an HTTP header")

// Error describes a failed upstream call. Its message is built when the error is created from
// values that cannot carry the key (status, a vetted error code, durations, redacted transport
// text), so it is safe to log and to return to callers.
type Error struct {
	Kind       error         // one of the Err* sentinels; Unwrap returns it
	Status     int           // HTTP status of the last attempt, 0 if none arrived
	Code       string        // upstream error.code, only if it matches ^[a-z_]{1,64}$ and is not part of the key
	RetryAfter time.Duration // how long the upstream asked us (or we needed) to wait; 0 if unknown
	// KeyReflected reports that the upstream echoed the key in its error body or headers. None of
	// those bytes are in the error; the broker counts and audits the event.
	KeyReflected bool
	// PastDeadline: the call stopped because the wait it needed (RetryAfter: the upstream's
	// Retry-After, the credential's gate) would pass the deadline of Do's ctx, and only that; a
	// caller with more time would have waited it out and tried again.
	PastDeadline bool

	msg   string // complete, already-redacted message
	cause error  // context or transport error; reachable through Is only, never through Unwrap
}

func (e *Error) Error() string { return e.msg }

// Unwrap returns the kind, so errors.Is(err, ErrRateLimited) works.
func (e *Error) Unwrap() error { return e.Kind }

// Is reports whether the underlying cause matches target, so errors.Is(err,
// context.DeadlineExceeded) keeps working. The cause is not exposed through Unwrap because its own
// fields (a *url.Error's chain, say) are not vetted for secrets the way msg is.
func (e *Error) Is(target error) bool {
	return e.cause != nil && errors.Is(e.cause, target)
}

var codeRE = regexp.MustCompile(`^[a-z_]{1,64}$`)

// statusError builds the error for a non-2xx status. code is error.code as errorOutcome vetted it
// (empty when the body had none or it was dropped).
func statusError(kind error, status int, code string, retryAfter time.Duration, attempts int) *Error {
	var b strings.Builder
	b.WriteString("upstream returned ")
	b.WriteString(strconv.Itoa(status))
	if code != "" {
		b.WriteString(" ")
		b.WriteString(code)
	}
	b.WriteString(" (")
	b.WriteString(strings.TrimPrefix(kind.Error(), "upstream "))
	b.WriteString(")")
	writeTail(&b, retryAfter, attempts)
	return &Error{Kind: kind, Status: status, Code: code, RetryAfter: retryAfter, msg: b.String()}
}

// causeError builds the error for a failure without a usable status: transport errors, deadlines,
// oversize or malformed bodies. detail must already be redacted.
func causeError(kind error, status int, detail string, cause error, retryAfter time.Duration, attempts int) *Error {
	var b strings.Builder
	b.WriteString(kind.Error())
	if detail != "" {
		b.WriteString(": ")
		b.WriteString(detail)
	}
	writeTail(&b, retryAfter, attempts)
	return &Error{Kind: kind, Status: status, RetryAfter: retryAfter, msg: b.String(), cause: cause}
}

func writeTail(b *strings.Builder, retryAfter time.Duration, attempts int) {
	if retryAfter > 0 {
		b.WriteString("; retry after ")
		b.WriteString(formatWait(retryAfter))
	}
	if attempts > 1 {
		fmt.Fprintf(b, " (after %d attempts)", attempts)
	}
}

// formatWait rounds up to whole seconds once a wait is a second or more: a client told "retry after
// 2s" that actually needed 2.4s would come back too early.
func formatWait(d time.Duration) string {
	if d >= time.Second {
		return ((d + time.Second - 1) / time.Second * time.Second).String()
	}
	return d.Round(time.Millisecond).String()
}
