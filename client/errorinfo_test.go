package client

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func withInfo(t *testing.T, code codes.Code, msg string, details ...*errdetails.ErrorInfo) *status.Status {
	t.Helper()
	st := status.New(code, msg)
	for _, d := range details {
		var err error
		if st, err = st.WithDetails(d); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// Reason, RetryDelay and Metadata come from brokerd's ErrorInfo and RetryInfo, over the wire.
func TestErrorExposesReasonAndRetryDelay(t *testing.T) {
	f := &fakeBroker{}
	c := newClient(t, startBroker(t, f))
	for _, tc := range []struct {
		name     string
		st       func(t *testing.T) *status.Status
		reason   string
		retry    time.Duration
		hasRetry bool
		tokenID  string
		sentinel error
	}{
		{name: "rate limited with a wait", reason: "RATE_LIMITED", retry: 1500 * time.Millisecond, hasRetry: true, tokenID: "tok1", sentinel: ErrResourceExhausted,
			st: func(t *testing.T) *status.Status {
				st := withInfo(t, codes.ResourceExhausted, "token tok1 is limited", &errdetails.ErrorInfo{Domain: "credbroker.dev", Reason: "RATE_LIMITED", Metadata: map[string]string{"token_id": "tok1"}})
				st, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
				if err != nil {
					t.Fatal(err)
				}
				return st
			}},
		{name: "expired, no wait", reason: "TOKEN_EXPIRED", sentinel: ErrUnauthenticated,
			st: func(t *testing.T) *status.Status {
				return withInfo(t, codes.Unauthenticated, "expired", &errdetails.ErrorInfo{Domain: "credbroker.dev", Reason: "TOKEN_EXPIRED"})
			}},
		{name: "another domain is not brokerd's reason", sentinel: ErrUnavailable,
			st: func(t *testing.T) *status.Status {
				return withInfo(t, codes.Unavailable, "proxy", &errdetails.ErrorInfo{Domain: "example.com", Reason: "PROXY_DOWN"})
			}},
		{name: "no details", sentinel: ErrUnavailable,
			st: func(t *testing.T) *status.Status { return status.New(codes.Unavailable, "down") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.err = tc.st(t).Err()
			f.mu.Unlock()
			_, err := c.Status(testContext(t))
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, tc.sentinel) {
				t.Fatalf("%T %v, want *Error wrapping %v", err, err, tc.sentinel)
			}
			if e.Reason() != tc.reason {
				t.Errorf("Reason() = %q, want %q", e.Reason(), tc.reason)
			}
			if d, ok := e.RetryDelay(); d != tc.retry || ok != tc.hasRetry {
				t.Errorf("RetryDelay() = %s %v, want %s %v", d, ok, tc.retry, tc.hasRetry)
			}
			if got := e.Metadata()["token_id"]; got != tc.tokenID {
				t.Errorf("Metadata()[token_id] = %q, want %q", got, tc.tokenID)
			}
			// The details survive status.FromError on the client's error.
			if st, _ := status.FromError(err); len(st.Details()) != len(tc.st(t).Details()) {
				t.Errorf("GRPCStatus lost details: %v", st.Details())
			}
		})
	}
}
