package grpcapi

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
)

// auditor records every credbroker call (admin and data plane, allowed or refused) before its
// response is returned. If the record cannot be written the call fails with Unavailable: a call
// that cannot be proven afterwards does not happen (fail closed, as Vault does).
type auditor struct {
	b   *broker.Broker
	log *slog.Logger
	// known holds every registered method ("/service/method"); a call to any other is audited as
	// an unknown method, whatever its service. Filled by NewServer before serving.
	known map[string]bool
	// admins is checked here as well as in Admins.unary, so a refused admin call is refused
	// before its "started" record and is coalesced like other refusals (broker/refusals.go).
	admins Admins
}

// audited reports whether method is one of ours; health checks and reflection are not audited
// (the watchdog alone would flood the log).
func audited(method string) bool { return strings.HasPrefix(method, "/credbroker.v1.") }

// changesState lists the admin calls that change something. Each is recorded durably as started
// before it runs, so one whose audit cannot be written never happens.
var changesState = map[string]bool{
	"PutCredential": true, "RotateCredential": true, "DeleteCredential": true,
	"RevokeToken": true, "RollbackCredential": true, "SetRotationPolicy": true, "ImportCredential": true,
	"Rekey": true, "SetCredentialLimits": true, "ImportCredentials": true,
	"AddWorkload": true, "RemoveWorkload": true, "RewrapMasterKey": true, "MigrateMasterKey": true,
}

// answersUnaudited lists read-only calls that answer even when the audit log cannot be written:
// Status is how an operator learns that it cannot (its warnings say why: a full disk), so
// refusing it would hide the one thing they need. It changes nothing and returns no secret, only
// to admins; its record is written whenever the log takes it, and a missed one is logged.
var answersUnaudited = map[string]bool{"Status": true}

// recordedWithChange lists the admin calls whose change is committed in the same transaction as
// their OK record (broker.CallInfo.Outcome): the change cannot exist without its record, so they
// need no "started" record, and a call costs one durable commit instead of three.
var recordedWithChange = map[string]bool{"MintToken": true}

// FetchRefusal names the coalesced refusal of a FetchToken (gRPC or the HTTP front's) that failed
// with code: a refused attestation, or, past it, every watch taken or the uid's fetch rate spent.
// A process needs no token to cause any of them, as often as it likes, so each is recorded like a
// call without a token. ok is false for any other failure, which gets a full record.
func FetchRefusal(code codes.Code, ci *broker.CallInfo) (reason string, ok bool) {
	switch {
	case code == codes.PermissionDenied:
		return broker.RefusedAttestation, true
	case ci.Event == broker.RefusedWatchLimit || ci.Event == broker.RefusedFetchRate:
		return ci.Event, true
	}
	return "", false
}

func (a auditor) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !audited(info.FullMethod) {
		return handler(ctx, req)
	}
	if err := a.admins.authorize(ctx, info.FullMethod); err != nil {
		a.b.RecordRefusal(ctx, broker.CallRecord{Method: info.FullMethod, Caller: callerFrom(ctx), Code: status.Code(err).String()}, broker.RefusedNotAdmin)
		return nil, err
	}
	start := time.Now()
	ci := &broker.CallInfo{Method: info.FullMethod}
	record := func(code string) broker.CallRecord {
		return broker.CallRecord{Method: ci.Method, Caller: callerFrom(ctx), Code: code, Latency: time.Since(start), Info: ci}
	}
	if recordedWithChange[strings.TrimPrefix(info.FullMethod, adminPrefix)] || info.FullMethod == fetchTokenMethod {
		ci.Outcome = record
	}
	resp, err := a.run(ctx, ci, req, info, handler)
	if ci.Recorded && err == nil {
		return resp, nil // the OK record was committed with the change
	}
	if reason, ok := FetchRefusal(status.Code(err), ci); ok && info.FullMethod == fetchTokenMethod {
		a.b.RecordRefusal(ctx, record(status.Code(err).String()), reason)
		return nil, err
	}
	if status.Code(err) == codes.Unauthenticated {
		// No valid token: anyone who can reach the socket can cause this, as often as they like.
		a.b.RecordRefusal(ctx, record(codes.Unauthenticated.String()), TokenRefusal(ci.Event))
		return nil, withCallMetadata(err, ci)
	}
	if aerr := a.b.RecordCall(ctx, record(status.Code(err).String())); aerr != nil {
		if err == nil && answersUnaudited[strings.TrimPrefix(info.FullMethod, adminPrefix)] {
			a.log.Error("audit record not written; answering anyway (read-only)", "method", info.FullMethod, "err", aerr)
			return resp, nil
		}
		a.log.Error("audit record not written; failing the call", "method", info.FullMethod, "err", aerr)
		return nil, errAuditRefused()
	}
	return resp, withCallMetadata(err, ci)
}

// errAuditRefused is what a call refused because its audit record cannot be written is told.
func errAuditRefused() error {
	return refuse(codes.Unavailable, broker.ReasonAuditUnavailable, AuditRefusedMessage, 0, nil)
}

// AuditRefusedMessage is what a call refused for want of its audit record is told (gRPC and HTTP).
const AuditRefusedMessage = "brokerd cannot write its audit log, so the call was refused; the operator must check brokerd's log and disk"

// run gates the handler on the audit log: a state-changing admin call first makes a "started"
// record durable; any other call starts only while audit writes succeed (a Search runs before its
// record is written, so the window is the calls in flight when the disk fails). After a failure
// the gate probes with a commit before refusing (store.AuditHealthy), so the first call after the
// disk recovers goes ahead. The refusal itself is still recorded afterwards when possible. The
// calls in answersUnaudited are not gated.
func (a auditor) run(ctx context.Context, ci *broker.CallInfo, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch name := strings.TrimPrefix(info.FullMethod, adminPrefix); {
	case changesState[name]:
		if err := a.b.RecordCall(ctx, broker.CallRecord{Method: info.FullMethod, Caller: callerFrom(ctx), Code: "Started", Info: &broker.CallInfo{Event: "started"}}); err != nil {
			a.log.Error("audit record not written; refusing the call before it runs", "method", info.FullMethod, "err", err)
			return nil, errAuditRefused()
		}
	case answersUnaudited[name]:
		// Not gated: it reports the failure instead.
	default:
		if err := a.b.AuditHealthy(); err != nil {
			return nil, errAuditRefused() // built only when refusing: it marshals an ErrorInfo
		}
	}
	return handler(broker.WithCallInfo(ctx, ci), req)
}

// TokenRefusal is the refusal reason for an Unauthenticated call whose CallInfo event is event:
// one of a fixed set (the refusal metric's labels and the coalescer's keys), whatever the event.
func TokenRefusal(event string) string {
	switch event {
	case broker.RefusedNoToken, broker.RefusedInvalidToken, broker.RefusedRevokedToken, broker.RefusedExpiredToken,
		broker.RefusedBoundMisuse, broker.RefusedSpentToken:
		return event
	}
	return broker.RefusedInvalidToken
}

func (a auditor) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	method, ci := info.FullMethod, &broker.CallInfo{}
	if !a.known[method] {
		// Someone probing for methods: record that they tried, but not their string whole, and
		// coalesced, since it needs no token.
		err := handler(srv, ss)
		a.b.RecordRefusal(ss.Context(), broker.CallRecord{Method: boundedMethod(method), Caller: callerFrom(ss.Context()), Code: status.Code(err).String()},
			broker.RefusedUnknownMethod)
		return err
	}
	if !audited(method) {
		return handler(srv, ss)
	}
	if err := a.admins.authorize(ss.Context(), method); err != nil {
		a.b.RecordRefusal(ss.Context(), broker.CallRecord{Method: method, Caller: callerFrom(ss.Context()), Code: status.Code(err).String()}, broker.RefusedNotAdmin)
		return err
	}
	start := time.Now()
	if changesState[strings.TrimPrefix(method, adminPrefix)] {
		// As for unary calls (run): no state-changing stream runs unless its start is on record.
		if err := a.b.RecordCall(ss.Context(), broker.CallRecord{Method: method, Caller: callerFrom(ss.Context()), Code: "Started", Info: &broker.CallInfo{Event: "started"}}); err != nil {
			a.log.Error("audit record not written; refusing the call before it runs", "method", method, "err", err)
			return errAuditRefused()
		}
	}
	err := handler(srv, callInfoStream{ServerStream: ss, ctx: broker.WithCallInfo(ss.Context(), ci)})
	rec := broker.CallRecord{Method: method, Caller: callerFrom(ss.Context()), Code: status.Code(err).String(), Latency: time.Since(start), Info: ci}
	if aerr := a.b.RecordCall(ss.Context(), rec); aerr != nil {
		a.log.Error("audit record not written", "method", method, "err", aerr)
		return errAuditRefused()
	}
	return err
}

// callInfoStream hands a stream's handler the context carrying the call's CallInfo, as unary
// handlers get it.
type callInfoStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s callInfoStream) Context() context.Context { return s.ctx }

// maxMethodLen bounds a client-chosen method name kept in the audit log (ours are under 50).
const maxMethodLen = 96

// boundedMethod is the printable ASCII of an unknown method's name, at most maxMethodLen bytes,
// with "…" marking a cut: enough to see what was probed, never a caller's megabytes or escapes.
func boundedMethod(m string) string {
	var b strings.Builder
	for i := 0; i < len(m); i++ {
		if b.Len() == maxMethodLen {
			return b.String() + "…"
		}
		if c := m[i]; c > ' ' && c < 0x7f {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}
