package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// errorCodes maps domain sentinels to gRPC codes and to the reason a program acts on
// (google.rpc.ErrorInfo). This table and toStatus are the only place the mapping lives; the client
// maps the codes back to its own sentinels. A *broker.Refusal in the chain names a finer reason
// (TOKEN_EXPIRED rather than TOKEN_INVALID) and a wait; the code still comes from this table.
var errorCodes = []struct {
	err    error
	code   codes.Code
	reason string
}{
	// Before upstream.ErrResponseTooLarge, which it wraps: asking for fewer results helps.
	{errAnswerTooLarge, codes.OutOfRange, broker.ReasonAnswerTooLarge},
	{broker.ErrUnauthenticated, codes.Unauthenticated, broker.ReasonTokenInvalid},
	{broker.ErrPermissionDenied, codes.PermissionDenied, broker.ReasonPermissionDenied},
	{broker.ErrInvalidArgument, codes.InvalidArgument, broker.ReasonInvalidArgument},
	{broker.ErrCredentialMissing, codes.FailedPrecondition, broker.ReasonCredentialMissing},
	{broker.ErrShuttingDown, codes.Unavailable, broker.ReasonShuttingDown},
	{broker.ErrKMSUnavailable, codes.Unavailable, broker.ReasonKMSUnavailable},
	{broker.ErrInternal, codes.Internal, broker.ReasonInternal},
	{broker.ErrRateLimited, codes.ResourceExhausted, broker.ReasonRateLimited},
	// Before ErrAuditUnavailable, which a failed audit commit wraps it in.
	{store.ErrOutcomeUnknown, codes.Unknown, broker.ReasonOutcomeUnknown},
	{store.ErrAuditUnavailable, codes.Unavailable, broker.ReasonAuditUnavailable},
	{store.ErrSyncFailed, codes.Unavailable, broker.ReasonDatabaseUnavailable},
	{store.ErrNotFound, codes.NotFound, broker.ReasonNotFound},
	{store.ErrExists, codes.AlreadyExists, broker.ReasonAlreadyExists},
	{upstream.ErrRejected, codes.FailedPrecondition, broker.ReasonUpstreamRejectedKey},
	{upstream.ErrInvalidKey, codes.FailedPrecondition, broker.ReasonCredentialInvalid},
	{upstream.ErrInsufficientCredits, codes.ResourceExhausted, broker.ReasonUpstreamOutOfCredits},
	{upstream.ErrRateLimited, codes.ResourceExhausted, broker.ReasonUpstreamRateLimited},
	{upstream.ErrBadRequest, codes.InvalidArgument, broker.ReasonUpstreamBadRequest},
	{upstream.ErrUnavailable, codes.Unavailable, broker.ReasonUpstreamUnavailable},
	{upstream.ErrResponseTooLarge, codes.Unavailable, broker.ReasonUpstreamTooLarge},
	{upstream.ErrBadResponse, codes.Unavailable, broker.ReasonUpstreamBadResponse},
	{context.DeadlineExceeded, codes.DeadlineExceeded, broker.ReasonDeadlineExceeded},
	{context.Canceled, codes.Canceled, broker.ReasonCanceled},
}

// Classify returns the gRPC code, the reason and the wait (0 if unknown or useless) for a domain
// error, and whether it is one brokerd knows. The HTTP front maps errors with it too, so both
// edges agree on every refusal.
func Classify(err error) (code codes.Code, reason string, retryAfter time.Duration, known bool) {
	if errors.Is(err, store.ErrTampered) {
		return codes.DataLoss, broker.ReasonDatabaseTampered, 0, true
	}
	for _, m := range errorCodes {
		if errors.Is(err, m.err) {
			code, reason, known = m.code, m.reason, true
			break
		}
	}
	if !known {
		if _, ok := diskFault(err); ok {
			return codes.Unavailable, broker.ReasonDatabaseUnavailable, 0, true
		}
		return codes.Internal, broker.ReasonInternal, 0, false
	}
	if r, ok := broker.RefusalOf(err); ok {
		reason, retryAfter = r.Reason, r.RetryAfter
	}
	// The upstream's own Retry-After (or the wait its gate needed), where waiting helps.
	var ue *upstream.Error
	if retryAfter == 0 && errors.As(err, &ue) && ue.RetryAfter > 0 && (errors.Is(err, upstream.ErrRateLimited) || errors.Is(err, upstream.ErrUnavailable)) {
		retryAfter = ue.RetryAfter
	}
	return code, reason, retryAfter, true
}

// diskFault reports why the disk under the database refused a write, if it did.
func diskFault(err error) (string, bool) {
	for _, e := range []struct {
		errno syscall.Errno
		why   string
	}{{syscall.ENOSPC, "its disk is full"}, {syscall.EDQUOT, "its disk quota is exceeded"}, {syscall.EROFS, "its file system is read-only"}, {syscall.EIO, "of an I/O error"}} {
		if errors.Is(err, e.errno) {
			return e.why, true
		}
	}
	return "", false
}

// refuse builds a status with ErrorInfo (domain credbroker.dev, reason, metadata) and, when
// retryAfter > 0, RetryInfo. Every refusal brokerd sends is built here, so none lacks a reason.
func refuse(code codes.Code, reason, msg string, retryAfter time.Duration, md map[string]string) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Domain: broker.ErrorDomain, Reason: reason, Metadata: md}}
	if retryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
	}
	if with, err := st.WithDetails(details...); err == nil {
		st = with
	}
	return st.Err()
}

// withCallMetadata adds what the call is known to have used (token id, tool, credential: names
// and ids, never a secret) to the ErrorInfo of err, a status built by refuse. Other errors are
// returned unchanged.
func withCallMetadata(err error, ci *broker.CallInfo) error {
	st, ok := status.FromError(err)
	if !ok || err == nil || ci == nil {
		return err
	}
	md := map[string]string{}
	for k, v := range map[string]string{"token_id": ci.TokenID, "tool": ci.Tool, "credential": ci.Credential} {
		if v != "" {
			md[k] = v
		}
	}
	if len(md) == 0 {
		return err
	}
	p := st.Proto()
	changed := false
	for i, a := range p.Details {
		var info errdetails.ErrorInfo
		if a.UnmarshalTo(&info) != nil {
			continue
		}
		if info.Metadata == nil {
			info.Metadata = map[string]string{}
		}
		for k, v := range md {
			if _, set := info.Metadata[k]; !set {
				info.Metadata[k] = v
				changed = true
			}
		}
		if changed {
			if a2, err := anypb.New(&info); err == nil {
				p.Details[i] = a2
			}
		}
		break
	}
	if !changed {
		return err
	}
	return status.FromProto(p).Err()
}

// toStatus converts a domain error into a gRPC status. Domain errors are built from names and ids
// only, so their messages are safe to return; anything unrecognised is logged and returned as a
// generic Internal error so no unexpected detail leaves the process.
func toStatus(log *slog.Logger, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code, reason, retryAfter, known := Classify(err)
	switch {
	case reason == broker.ReasonDatabaseTampered:
		// Loud: a record in the database was forged, edited or moved by something other than
		// brokerd. The record was not used; the message (names and keys only) says what to do.
		log.Error("DATABASE TAMPERING: a record failed its integrity check and was refused; restore the database from a backup", "method", method, "err", err)
	case !known:
		log.Error("internal error", "method", method, "err", err)
		return refuse(code, reason, "internal error in brokerd; see its log", 0, nil)
	}
	if why, ok := diskFault(err); ok && reason == broker.ReasonDatabaseUnavailable && !errors.Is(err, store.ErrSyncFailed) {
		// The disk under the database: the write did not happen, and the operator can fix it.
		log.Error("database write failed", "method", method, "err", err)
		return refuse(code, reason, fmt.Sprintf("brokerd cannot write its database because %s; nothing was changed. The operator must fix the disk; brokerd recovers by itself", why), 0, nil)
	}
	return refuse(code, reason, err.Error(), retryAfter, nil)
}
