package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// errorCodes maps domain sentinels to gRPC codes. This table and toStatus are the only place the
// mapping lives; the client maps the codes back to its own sentinels.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	// Before upstream.ErrResponseTooLarge, which it wraps: asking for fewer results helps.
	{errAnswerTooLarge, codes.OutOfRange},
	{broker.ErrUnauthenticated, codes.Unauthenticated},
	{broker.ErrPermissionDenied, codes.PermissionDenied},
	{broker.ErrInvalidArgument, codes.InvalidArgument},
	{broker.ErrCredentialMissing, codes.FailedPrecondition},
	{broker.ErrShuttingDown, codes.Unavailable},
	{broker.ErrRateLimited, codes.ResourceExhausted},
	// Before ErrAuditUnavailable, which a failed audit commit wraps it in.
	{store.ErrOutcomeUnknown, codes.Unknown},
	{store.ErrAuditUnavailable, codes.Unavailable},
	{store.ErrSyncFailed, codes.Unavailable},
	{store.ErrNotFound, codes.NotFound},
	{store.ErrExists, codes.AlreadyExists},
	{upstream.ErrRejected, codes.FailedPrecondition},
	{upstream.ErrInvalidKey, codes.FailedPrecondition},
	{upstream.ErrInsufficientCredits, codes.ResourceExhausted},
	{upstream.ErrRateLimited, codes.ResourceExhausted},
	{upstream.ErrBadRequest, codes.InvalidArgument},
	{upstream.ErrUnavailable, codes.Unavailable},
	{upstream.ErrResponseTooLarge, codes.Unavailable},
	{upstream.ErrBadResponse, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
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
	if errors.Is(err, store.ErrTampered) {
		// Loud: a record in the database was forged, edited or moved by something other than
		// brokerd. The record was not used; the message (names and keys only) says what to do.
		log.Error("DATABASE TAMPERING: a record failed its integrity check and was refused; restore the database from a backup", "method", method, "err", err)
		return status.Error(codes.DataLoss, err.Error())
	}
	for _, m := range errorCodes {
		if errors.Is(err, m.err) {
			return status.Error(m.code, err.Error())
		}
	}
	// The disk under the database: the write did not happen, and the operator can fix it.
	for _, e := range []struct {
		errno syscall.Errno
		why   string
	}{{syscall.ENOSPC, "its disk is full"}, {syscall.EDQUOT, "its disk quota is exceeded"}, {syscall.EROFS, "its file system is read-only"}, {syscall.EIO, "of an I/O error"}} {
		if errors.Is(err, e.errno) {
			log.Error("database write failed", "method", method, "err", err)
			return status.Error(codes.Unavailable, fmt.Sprintf("brokerd cannot write its database because %s; nothing was changed. The operator must fix the disk; brokerd recovers by itself", e.why))
		}
	}
	log.Error("internal error", "method", method, "err", err)
	return status.Error(codes.Internal, "internal error in brokerd; see its log")
}
