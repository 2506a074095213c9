// Package httpfront serves Scavio's own REST surface (POST /api/v1/search with x-api-key, POST
// /api/v1/google with Authorization: Bearer) on brokerd's local listeners, with a broker token in
// place of the API key. Each request takes the gRPC Search path (broker.Broker.Search: token,
// scope, limits, budget, cache, redaction), is audited like a gRPC Search, and is refused in
// Scavio's error shape with the same reasons as the gRPC edge (grpcapi.Classify). An existing
// Scavio client works by changing only its base URL.
//
// On a Unix socket it also serves POST /credbroker/v1/token, the gRPC FetchToken by attestation:
// a program with no secret at all gets a token bound to its own process.
package httpfront

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/connlimit"
	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/peercred"
)

// Limits, as on the gRPC side: a request body is a query of at most 500 characters and a few
// options, so 64 KiB is generous; headers carry a token.
const (
	MaxBodyBytes      = 64 << 10
	MaxHeaderBytes    = 16 << 10
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request (a slow-drip body holds a connection no longer).
	ReadTimeout = 30 * time.Second
	IdleTimeout = 2 * time.Minute
)

// Handler answers Scavio's search endpoints from a broker.
type Handler struct {
	b   *broker.Broker
	log *slog.Logger
}

// New returns the handler for b.
func New(b *broker.Broker, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{b: b, log: log}
}

// NewServer returns an http.Server for h with brokerd's limits, which identifies each peer at
// accept: SO_PEERCRED on a Unix socket, the kernel's socket table on loopback TCP. A peer whose
// uid cannot be told stays unknown, and tokens bound to a uid are refused to it
// (TOKEN_BOUND_TO_OTHER_UID).
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if info, err := peercred.Read(c); err == nil {
				ctx = context.WithValue(ctx, unixPeerKey{}, true)
				return context.WithValue(ctx, callerKey{}, broker.Caller{UID: info.UID, GID: info.GID, PID: info.PID, Known: true,
					PIDFD: info.PIDFD, Exe: info.Exe, Comm: info.Comm, StartTime: info.StartTime, PidfdInode: info.PidfdInode, Groups: info.Groups})
			}
			// Loopback TCP: the uid from the kernel's socket table (gid and pid are not there,
			// and stay 0). Where it cannot be found the caller stays unknown, and uid-bound
			// tokens are refused. The connection cap (connlimit) found it already at accept.
			if pc, ok := c.(interface{ Peer() connlimit.Peer }); ok && pc.Peer().Known {
				return context.WithValue(ctx, callerKey{}, broker.Caller{UID: pc.Peer().UID, Known: true})
			}
			if uid, err := peercred.LoopbackTCPUID(c); err == nil {
				return context.WithValue(ctx, callerKey{}, broker.Caller{UID: uid, Known: true})
			} else if errors.Is(err, peercred.ErrPeerGone) {
				// The client closed first: nothing to fix, and one log line per connection a
				// local user opens and closes, without a token, would flood the log.
				log.Debug("loopback TCP peer closed before brokerd named it", "peer", c.RemoteAddr().String())
			} else if !errors.Is(err, peercred.ErrNotLoopback) {
				log.Warn("cannot tell the uid of a loopback TCP peer; uid-bound tokens are refused on this connection", "peer", c.RemoteAddr().String(), "err", err)
			}
			return ctx
		},
	}
}

type callerKey struct{}

// unixPeerKey marks a connection whose peer the kernel named by SO_PEERCRED (a Unix socket): only
// such a peer has a process that attestation can inspect and pin.
type unixPeerKey struct{}

func callerFrom(ctx context.Context) broker.Caller {
	c, _ := ctx.Value(callerKey{}).(broker.Caller)
	return c
}

// endpoints maps Scavio's paths to the broker's tools and the audit's method names.
var endpoints = map[string]struct{ tool, method string }{
	"/api/v1/search": {"web_search", broker.HTTPSearchMethod},
	"/api/v1/google": {"google_search", broker.HTTPGoogleMethod},
}

// body is the union of Scavio's two request bodies; unknown fields are refused, so nothing a
// client asked for is silently dropped.
type body struct {
	Query        *string `json:"query"`
	NumResults   *int    `json:"num_results"`
	SearchType   string  `json:"search_type"`
	CountryCode  string  `json:"country_code"`
	Language     string  `json:"language"`
	Page         int     `json:"page"`
	Device       string  `json:"device"`
	NFPR         *bool   `json:"nfpr"`
	LightRequest *bool   `json:"light_request"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep, ok := endpoints[r.URL.Path]
	if !ok && r.URL.Path != TokenPath {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("brokerd serves POST %s, POST %s and POST %s only", "/api/v1/search", "/api/v1/google", TokenPath), "")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.URL.Path+" takes POST", "")
		return
	}
	if r.URL.Path == TokenPath {
		h.serveToken(w, r)
		return
	}
	caller := callerFrom(r.Context())
	raw := presentedToken(r)
	start := time.Now()
	ci := &broker.CallInfo{Method: ep.method}
	ctx := broker.WithCallInfo(r.Context(), ci)
	record := func(code codes.Code) broker.CallRecord {
		return broker.CallRecord{Method: ci.Method, Caller: caller, Code: code.String(), Latency: time.Since(start), Info: ci}
	}
	// A raw upstream key where a token belongs: refused before any upstream call, and audited in
	// full (not coalesced) since it means a client still holds the real key.
	if cred, ok := h.b.PresentedRawKey(raw); ok {
		ci.Event, ci.Credential = broker.RefusedRawKey, cred
		h.log.Warn("a client presented a raw upstream key instead of a broker token; rotate the key", "credential", cred, "uid", caller.UID, "pid", caller.PID)
		if err := h.b.RecordCall(ctx, record(codes.Unauthenticated)); err != nil {
			h.log.Error("audit record not written", "method", ep.method, "err", err)
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", "a raw upstream API key was presented: brokerd accepts only broker tokens "+
			"(`brokerctl token mint`); the key was not used, and the operator should rotate it", broker.ReasonRawKeyPresented)
		return
	}
	req, err := decode(w, r, ep.tool)
	if err != nil {
		writeBodyError(w, err)
		h.b.RecordRefusal(ctx, record(codes.InvalidArgument), broker.RefusedUndecodable)
		return
	}
	if err := h.b.AuditHealthy(); err != nil {
		writeRefusal(w, http.StatusServiceUnavailable, broker.ReasonAuditUnavailable, grpcapi.AuditRefusedMessage, 0)
		return
	}
	res, err := h.b.Search(ctx, raw, caller, req)
	if err != nil && errors.Is(context.Cause(ctx), broker.ErrShuttingDown) {
		// Ended by brokerd's shutdown (the server's base context), not by the client: answered
		// and audited as a shutdown, as the gRPC drainer does.
		err = broker.ErrEndedByShutdown
	}
	code, reason, retry, known := codes.OK, "", time.Duration(0), true
	if err != nil {
		code, reason, retry, known = grpcapi.Classify(err)
	}
	if code == codes.Unauthenticated {
		// No valid token: coalesced like the gRPC side's token refusals (broker/refusals.go).
		h.b.RecordRefusal(ctx, record(code), grpcapi.TokenRefusal(ci.Event))
	} else if aerr := h.b.RecordCall(ctx, record(code)); aerr != nil {
		h.log.Error("audit record not written; failing the call", "method", ep.method, "err", aerr)
		writeRefusal(w, http.StatusServiceUnavailable, broker.ReasonAuditUnavailable, grpcapi.AuditRefusedMessage, 0)
		return
	}
	if ci.Verified {
		// Only for the holder of the token: an unverified id is whatever the caller wrote (ids
		// are public), and another token's limiter is its holder's business.
		h.rateLimitHeaders(w, ci.TokenID)
	}
	if err != nil {
		msg := err.Error()
		if !known {
			h.log.Error("internal error", "method", ep.method, "err", err)
			msg = "internal error in brokerd; see its log"
		}
		writeRefusal(w, httpStatus(code, reason), reason, msg, retry)
		return
	}
	out, err := encode(res, req)
	if err != nil {
		h.log.Error("encode answer", "method", ep.method, "err", err)
		writeRefusal(w, http.StatusInternalServerError, broker.ReasonInternal, "internal error in brokerd; see its log", 0)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if res.Cached {
		w.Header().Set("X-Credbroker-Cache", fmt.Sprintf("hit; age=%ds", int(res.CacheAge.Seconds())))
	}
	w.Write(out)
}

// presentedToken is the "API key" the client sent: x-api-key (contract A) or Authorization:
// Bearer (contract B), on either path, as a Scavio client may use either.
func presentedToken(r *http.Request) string {
	if v := strings.TrimSpace(r.Header.Get("X-Api-Key")); v != "" {
		return v
	}
	if v := r.Header.Get("Authorization"); len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

// readJSON reads the body into v: at most MaxBodyBytes, one JSON object of known fields (or, when
// emptyOK, nothing at all, leaving v as it is).
func readJSON(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) error {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		return err
	}
	if emptyOK && len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("the body is not the JSON object this endpoint takes: %s", jsonProblem(err))
	}
	if dec.More() {
		return errors.New("the body holds more than one JSON value")
	}
	return nil
}

// writeBodyError answers a body readJSON refused: 413 when too large, else 400 saying why.
func writeBodyError(w http.ResponseWriter, err error) {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeError(w, http.StatusRequestEntityTooLarge, "request_too_large", fmt.Sprintf("the request body is over %d bytes", MaxBodyBytes), broker.ReasonRequestTooLarge)
		return
	}
	writeError(w, http.StatusBadRequest, "bad_request", err.Error(), broker.ReasonInvalidArgument)
}

// decode reads and checks a search body (readJSON).
func decode(w http.ResponseWriter, r *http.Request, tool string) (broker.SearchRequest, error) {
	var b body
	if err := readJSON(w, r, &b, false); err != nil {
		return broker.SearchRequest{}, err
	}
	if b.Query == nil {
		return broker.SearchRequest{}, errors.New(`"query" is required`)
	}
	req := broker.SearchRequest{Tool: tool, Query: *b.Query}
	if b.NumResults != nil {
		if *b.NumResults < 1 || *b.NumResults > math.MaxInt32 {
			return broker.SearchRequest{}, errors.New(`"num_results" must be a positive number`)
		}
		req.NumResults = *b.NumResults
	}
	if tool == "web_search" {
		if b.SearchType != "" || b.CountryCode != "" || b.Language != "" || b.Page != 0 || b.Device != "" || b.NFPR != nil || b.LightRequest != nil {
			return broker.SearchRequest{}, errors.New("/api/v1/search takes query and num_results only; the Google options belong to /api/v1/google")
		}
	} else {
		req.Google = broker.GoogleOptions{SearchType: b.SearchType, CountryCode: b.CountryCode, Language: b.Language, Page: b.Page,
			Device: b.Device, NFPR: b.NFPR, LightRequest: b.LightRequest}
	}
	return req, nil
}

// jsonProblem says what is wrong with a body without repeating it.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be a %s", typ.Field, typ.Type)
	case errors.Is(err, io.EOF):
		return "the body is empty"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ") // the field name, quoted by encoding/json
	}
	return "invalid JSON"
}

// encode rebuilds the upstream's JSON answer from the broker's result: every top-level field the
// upstream sent (already redacted) and "results", trimmed to what was asked for as on the gRPC
// side, keys in sorted order as json.Marshal of a map writes them. Field order may differ from
// the upstream's; the content is the same.
func encode(res *broker.SearchResult, req broker.SearchRequest) ([]byte, error) {
	want := broker.ResultsWanted(res.Tool, req)
	// A cached answer keeps this encoding for the next hit (it depends on the answer and want only).
	return res.Encoded(broker.EncodingKey{Edge: "http", Results: want}, func() ([]byte, error) {
		// The answer's wire form, transcoded from the body without maps, writes the same bytes
		// as the maps' json.Marshal below (answerwire's fuzz test holds it to that); the maps
		// are the way only where the transcoder refused a body encoding/json accepts.
		w, err := res.Wire()
		if err != nil {
			return nil, err
		}
		if w != nil {
			return w.AppendJSON(make([]byte, 0, res.BodyBytes()+64), want), nil
		}
		return res.MapJSON(want)
	})
}

// rateLimitHeaders reports the calling token's own rate limit as brokerd's limiter stands, in
// Scavio's X-RateLimit-* headers. A token without one gets none; ServeHTTP calls it only for a
// token whose secret verified.
func (h *Handler) rateLimitHeaders(w http.ResponseWriter, tokenID string) {
	if tokenID == "" {
		return
	}
	st, ok := h.b.TokenRateLimit(tokenID)
	if !ok {
		return
	}
	w.Header().Set("X-RateLimit-Limit", strconv.Itoa(st.Limit))
	w.Header().Set("X-RateLimit-Remaining", strconv.Itoa(st.Remaining))
	w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(int64(math.Ceil(float64(st.Reset.UnixNano())/1e9)), 10))
}

// httpStatus is the HTTP status for a refusal, as Scavio would answer where it has one.
func httpStatus(code codes.Code, reason string) int {
	switch reason {
	case broker.ReasonUpstreamOutOfCredits:
		return http.StatusPaymentRequired
	case broker.ReasonRateLimited, broker.ReasonUpstreamRateLimited, broker.ReasonBudgetExhausted, broker.ReasonCredentialCeiling:
		return http.StatusTooManyRequests
	case broker.ReasonUpstreamRejectedKey, broker.ReasonCredentialInvalid, broker.ReasonUpstreamUnavailable,
		broker.ReasonUpstreamBadResponse, broker.ReasonUpstreamTooLarge:
		return http.StatusBadGateway // the upstream failed, not the caller
	case broker.ReasonUpstreamBadRequest, broker.ReasonAnswerTooLarge:
		return http.StatusBadRequest
	}
	switch code {
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.FailedPrecondition, codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Canceled:
		return 499 // the client left; nobody reads this
	}
	return http.StatusInternalServerError
}

// scavioCodes are Scavio's error.code values for the statuses it documents.
var scavioCodes = map[int]string{
	http.StatusBadRequest: "bad_request", http.StatusUnauthorized: "unauthorized", http.StatusPaymentRequired: "insufficient_credits",
	http.StatusForbidden: "forbidden", http.StatusTooManyRequests: "rate_limit_exceeded", http.StatusInternalServerError: "internal_error",
	http.StatusBadGateway: "bad_gateway", http.StatusServiceUnavailable: "service_unavailable", http.StatusGatewayTimeout: "gateway_timeout",
	499: "canceled",
}

// writeRefusal answers a refusal: Scavio's error body with brokerd's reason, and Retry-After
// (whole seconds, rounded up) where waiting helps.
func writeRefusal(w http.ResponseWriter, status int, reason, msg string, retry time.Duration) {
	if retry > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
	}
	writeError(w, status, scavioCodes[status], msg, reason)
}

// errorBody is Scavio's {"error":{"code","message"}}, plus brokerd's reason (README: reasons).
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Reason  string `json:"reason,omitempty"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg, reason string) {
	var b errorBody
	b.Error.Code, b.Error.Message, b.Error.Reason = code, msg, reason
	if reason != "" {
		w.Header().Set("X-Credbroker-Reason", reason)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(b)
}
