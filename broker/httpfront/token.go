package httpfront

import (
	"encoding/json"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/grpcapi"
)

// TokenPath is the HTTP twin of the gRPC FetchToken: a token by attestation, no secret sent.
const TokenPath = "/credbroker/v1/token"

// tokenRequest is FetchToken's request: the tools to scope the token to (all of the matching
// registration's when empty). An empty body is the same as {}.
type tokenRequest struct {
	Tools []string `json:"tools"`
}

// tokenAnswer is FetchToken's answer. The token is the one secret brokerd ever hands out, and
// only to the process it is bound to.
type tokenAnswer struct {
	Token     string    `json:"token"`
	ID        string    `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	Workload  string    `json:"workload"`
	Tools     []string  `json:"tools"`
}

// serveToken answers POST /credbroker/v1/token. It is audited as the gRPC FetchToken is: the token
// and its OK record are committed together, a refused attestation is a coalesced refusal (anyone
// who can reach the socket can cause one), anything else a full record.
func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request) {
	caller := callerFrom(r.Context())
	start := time.Now()
	ci := &broker.CallInfo{}
	ctx := broker.WithCallInfo(r.Context(), ci)
	record := func(code codes.Code) broker.CallRecord {
		return broker.CallRecord{Method: broker.HTTPTokenMethod, Caller: caller, Code: code.String(), Latency: time.Since(start), Info: ci}
	}
	if unix, _ := r.Context().Value(unixPeerKey{}).(bool); !unix {
		// On TCP the kernel names a uid at best, never a process: there is nothing to attest, and
		// a token must not be bound to whatever process holds a port next.
		h.b.RecordRefusal(ctx, record(codes.PermissionDenied), broker.RefusedAttestation)
		writeError(w, http.StatusForbidden, "forbidden", "attestation needs a Unix-socket peer: brokerd serves "+TokenPath+
			" on its unix: HTTP listeners only (the kernel names no process for a TCP peer)", broker.ReasonPermissionDenied)
		return
	}
	var req tokenRequest
	if err := readJSON(w, r, &req, true); err != nil {
		writeBodyError(w, err)
		h.b.RecordRefusal(ctx, record(codes.InvalidArgument), broker.RefusedUndecodable)
		return
	}
	if err := h.b.AuditHealthy(); err != nil {
		writeRefusal(w, http.StatusServiceUnavailable, broker.ReasonAuditUnavailable, grpcapi.AuditRefusedMessage, 0)
		return
	}
	ci.Outcome = func(code string) broker.CallRecord {
		rec := record(codes.OK)
		rec.Code = code
		return rec
	}
	tok, rec, err := h.b.FetchToken(ctx, caller, req.Tools)
	if err != nil {
		code, reason, retry, known := grpcapi.Classify(err)
		event, coalesced := grpcapi.FetchRefusal(code, ci)
		switch {
		case coalesced:
			h.b.RecordRefusal(ctx, record(code), event)
		case !ci.Recorded:
			if aerr := h.b.RecordCall(ctx, record(code)); aerr != nil {
				h.log.Error("audit record not written", "method", broker.HTTPTokenMethod, "err", aerr)
			}
		}
		msg := err.Error()
		if !known {
			h.log.Error("internal error", "method", broker.HTTPTokenMethod, "err", err)
			msg = "internal error in brokerd; see its log"
		}
		writeRefusal(w, httpStatus(code, reason), reason, msg, retry)
		return
	}
	out, err := json.Marshal(tokenAnswer{Token: tok, ID: rec.ID, ExpiresAt: rec.ExpiresAt.UTC(), Workload: rec.Workload, Tools: rec.Tools})
	if err != nil {
		h.log.Error("encode answer", "method", broker.HTTPTokenMethod, "err", err)
		writeRefusal(w, http.StatusInternalServerError, broker.ReasonInternal, "internal error in brokerd; see its log", 0)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store") // a token: no proxy or client cache keeps it
	w.Write(out)
}
