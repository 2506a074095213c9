package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/limiter"
)

// Auth says how the key travels to the upstream; the two Scavio contracts disagree.
type Auth int

const (
	AuthAPIKeyHeader Auth = iota // header "x-api-key: <key>" (contract A, /api/v1/search)
	AuthBearer                   // header "Authorization: Bearer <key>" (contract B, /api/v1/google)
)

func (a Auth) String() string {
	switch a {
	case AuthAPIKeyHeader:
		return "x-api-key"
	case AuthBearer:
		return "bearer"
	}
	return "Auth(" + strconv.Itoa(int(a)) + ")"
}

// Request is one upstream call. It carries no key: the key is an argument to Do so that a Request
// can be logged or kept without carrying a secret.
type Request struct {
	Path string // e.g. "/api/v1/search"; joined to Config.BaseURL
	Auth Auth
	Body []byte // JSON body, sent with Content-Type: application/json
	// Decode, if set, decodes a 2xx answer's (redacted) body for the caller, into
	// Response.Decoded. Decoding checks the body, so Do makes no separate JSON validity pass; an
	// answer Decode refuses is ErrBadResponse, with Decode's message as the detail (unless it is a
	// JSON syntax error), so that message must never quote the body.
	Decode func(body []byte) (any, error)
	// Resume, if set, is asked before every attempt that follows a wait of this call (the
	// credential's gate, a retry's pause) whether the call may still go on: what the caller
	// checked before the call may have changed meanwhile (the broker's token was revoked, say).
	// An error stops the call there, that attempt unsent, and Do returns it as it is (MayHaveBilled
	// still says whether an earlier attempt may have been charged). An attempt that did not wait
	// never asks.
	Resume Resumer
}

// Resumer is Request.Resume.
type Resumer interface {
	// Resume returns nil if the call may send its next attempt after w; ctx is Do's.
	Resume(ctx context.Context, w Wait) error
}

// Wait is what an attempt waited for before Request.Resume was asked about it.
type Wait struct {
	// Attempt is the attempt about to be sent: 1 for the first, more for a retry (which always
	// waited first: the upstream's Retry-After or the backoff).
	Attempt int
	// Gate: the attempt waited at the credential's gate (a 429's pause, another caller's probe).
	Gate bool
}

// Response is a successful (2xx) upstream answer. Body and Header are redacted: wherever the
// upstream echoed the key (in any form Redact knows), they hold "[REDACTED]" instead.
type Response struct {
	Status int
	Body   []byte      // JSON body, checked to be valid JSON (or decoded by Request.Decode), redacted with RedactJSON
	Header http.Header // includes X-RateLimit-* headers; values redacted, names holding the key dropped
	// KeyReflected counts the body strings and header fields that held the key: an upstream that
	// echoes the key in a success answer would otherwise hand it to every client and cache.
	KeyReflected int
	// Decoded is what Request.Decode returned for Body (nil without a Decode).
	Decoded any
}

// Config configures a Client. Zero values select the defaults noted on each field.
type Config struct {
	// BaseURL is required, e.g. https://api.scavio.dev: http or https, a host, no user info, query
	// or fragment.
	BaseURL string
	// HTTPClient is optional. It is copied, and redirects are always disabled on the copy. The
	// default has its own Transport with connection reuse (64 idle per host), dial, TLS and
	// response-header timeouts, and no proxy (HTTP_PROXY and HTTPS_PROXY are ignored).
	HTTPClient *http.Client
	// AttemptTimeout bounds each attempt, including reading the body. Default 15s.
	AttemptTimeout time.Duration
	// MaxResponseBytes bounds a 2xx body; a larger one is ErrResponseTooLarge. Default 4 MiB.
	MaxResponseBytes int64
	// MaxRetries counts retries after 429, 5xx, 408 and transport errors only. 0 means the
	// default, 2 (3 attempts); negative means no retries.
	MaxRetries int
	// BackoffBase is the first retry's backoff, doubled per retry, with jitter. Default 200ms.
	BackoffBase time.Duration
	// MaxRetryAfter is the longest Retry-After / X-RateLimit-Reset wait Do sits out. A longer one
	// is not waited for: Do returns at once with the wait in Error.RetryAfter. Default 10s.
	MaxRetryAfter time.Duration
	// Sleep, if set, replaces the wait between attempts (for tests). It must return ctx.Err() if
	// ctx ends first.
	Sleep func(ctx context.Context, d time.Duration) error
}

const (
	defaultAttemptTimeout   = 15 * time.Second
	defaultMaxResponseBytes = 4 << 20
	defaultMaxRetries       = 2
	defaultBackoffBase      = 200 * time.Millisecond
	defaultMaxRetryAfter    = 10 * time.Second

	// maxBackoff caps the exponential backoff so a large BackoffBase or retry count cannot turn into
	// minutes of silence.
	maxBackoff = 5 * time.Second
	// errorBodyLimit is how much of a non-2xx body we read to find error.code; Scavio's error bodies
	// are tiny and anything bigger is not an error body we can use.
	errorBodyLimit = 64 << 10
	// drainLimit bounds how much we read just to let the connection be reused; past it, dropping the
	// connection is cheaper than reading.
	drainLimit = 256 << 10
	// maxKeyLen keeps a corrupt credential from becoming a giant header.
	maxKeyLen = 4096
)

// Client calls the upstream. It is safe for concurrent use; share one per upstream so connections
// are reused.
type Client struct {
	base           *url.URL
	hc             *http.Client
	attemptTimeout time.Duration
	maxBytes       int64
	maxRetries     int
	backoffBase    time.Duration
	maxRetryAfter  time.Duration
	sleep          func(context.Context, time.Duration) error
	now            func() time.Time
	targets        sync.Map // Request.Path -> URL (endpoint)
}

// New validates cfg and builds a Client.
func New(cfg Config) (*Client, error) {
	base, err := ParseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"AttemptTimeout", cfg.AttemptTimeout},
		{"BackoffBase", cfg.BackoffBase},
		{"MaxRetryAfter", cfg.MaxRetryAfter},
	} {
		if d.v < 0 {
			return nil, fmt.Errorf("upstream: %s must not be negative", d.name)
		}
	}
	if cfg.MaxResponseBytes < 0 {
		return nil, errors.New("upstream: MaxResponseBytes must not be negative")
	}
	c := &Client{
		base:           base,
		attemptTimeout: cmpOr(cfg.AttemptTimeout, defaultAttemptTimeout),
		maxBytes:       cmpOr(cfg.MaxResponseBytes, defaultMaxResponseBytes),
		maxRetries:     cfg.MaxRetries,
		backoffBase:    cmpOr(cfg.BackoffBase, defaultBackoffBase),
		maxRetryAfter:  cmpOr(cfg.MaxRetryAfter, defaultMaxRetryAfter),
		sleep:          cfg.Sleep,
		now:            time.Now,
	}
	switch {
	case cfg.MaxRetries == 0:
		c.maxRetries = defaultMaxRetries
	case cfg.MaxRetries < 0:
		c.maxRetries = 0
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	if cfg.HTTPClient != nil {
		hc := *cfg.HTTPClient
		c.hc = &hc
	} else {
		c.hc = &http.Client{Transport: NewTransport(nil)}
	}
	// A redirect would replay the x-api-key header (which net/http does not treat as sensitive) to
	// wherever the Location points. Scavio does not redirect API calls, so a 3xx is an error.
	c.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// ParseBaseURL checks an upstream base URL as New does (brokerd checks its flag with it before
// anything starts). It never echoes the URL in its errors: a misconfigured one may carry a password.
func ParseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("upstream: BaseURL is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("upstream: BaseURL is not a valid URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("upstream: BaseURL must use http or https")
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("upstream: BaseURL must name a host")
	case u.User != nil:
		return nil, errors.New("upstream: BaseURL must not contain user info; keys are passed to Do")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "":
		return nil, errors.New("upstream: BaseURL must not have a query or fragment")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// MaxResponseHeaderBytes bounds an upstream answer's header block (NewTransport).
const MaxResponseHeaderBytes = 64 << 10

// NewTransport is the transport upstream calls use (brokerd wraps it for its metrics). It never
// reads HTTP_PROXY, HTTPS_PROXY or NO_PROXY: an inherited variable would route every call, and its
// key, through whatever proxy it names; a proxy is used only when given here (--upstream-proxy).
func NewTransport(proxy *url.URL) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:               nil,
		DialContext:         dialer.DialContext,
		ForceAttemptHTTP2:   true,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		// No ResponseHeaderTimeout: the attempt's context (attemptTimeout) already bounds the wait
		// for headers, and a second timer of the same length raced it to decide which error the
		// caller saw ("attempt timed out" or net/http's "timeout awaiting response headers").
		ExpectContinueTimeout: time.Second,
		// An answer's headers are read whole before anything else (net/http's default allows
		// 10 MB, per connection, 64 at once) and then every value is checked for the key: bound
		// them as the body is bound (MaxResponseBytes). Scavio's headers are a few hundred bytes.
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
		// Every agent's call goes to the same host through one broker: keep enough idle
		// connections for a burst instead of the default 2 per host, and open no more than that
		// at once (calls past it wait for one, within their deadline), so neither a burst nor
		// searches whose callers left can turn into an fd per call.
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		MaxConnsPerHost:     64,
		IdleConnTimeout:     90 * time.Second,
	}
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return t
}

func (c *Client) endpoint(p string) (string, error) {
	// Built once per path (the tool table's few): checking and formatting a URL per call cost more
	// than a map lookup.
	if t, ok := c.targets.Load(p); ok {
		return t.(string), nil
	}
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#\\") || path.Clean(p) != p {
		return "", errors.New("upstream: Request.Path must be a clean absolute path without query")
	}
	u := *c.base
	u.Path = c.base.Path + p
	t := u.String()
	c.targets.Store(p, t)
	return t, nil
}

// validKey reports whether key can be sent: not empty, not too long, and HeaderSafe.
func validKey(key []byte) bool {
	return len(key) > 0 && len(key) <= maxKeyLen && HeaderSafe(key)
}

// HeaderSafe reports whether key can travel as a header value: visible ASCII only, so it cannot
// split a header or be mangled by trimming. The broker checks stored values with it too, so a key
// the upstream call would refuse is refused when it is stored.
func HeaderSafe(key []byte) bool {
	for _, b := range key {
		if b < 0x21 || b > 0x7e {
			return false
		}
	}
	return true
}

// outcome is what one attempt produced. The *Error is built from it only once the retry loop is
// done, so the message can say how many attempts were made.
type outcome struct {
	resp      *Response
	kind      error
	status    int
	code      string        // error.code, vetted by errorOutcome (empty when dropped)
	reflected bool          // the error body echoed the key
	wait      time.Duration // Retry-After / X-RateLimit-Reset, if the upstream sent one
	hasWait   bool
	detail    string // redacted, for failures without a status
	cause     error
	retryable bool
	// billed: the attempt got a connection (so its request may have been written) and no error
	// status came back for it; the upstream may have served it and charged credits.
	billed bool
	// stopped is Request.Resume's error: the attempt was not sent.
	stopped error
}

// Do sends req with key and returns the 2xx response, or an error whose Kind classifies the
// failure. See the package documentation for what is retried.
func (c *Client) Do(ctx context.Context, req Request, key []byte) (*Response, error) {
	return c.do(ctx, nil, req, key)
}

// DoDetached is Do for a call whose answer must not be thrown away once the upstream may have
// billed it. ctx, the caller's, still ends the waits between attempts, stops further attempts and
// cuts off an attempt that has no connection yet (nothing was sent); but an attempt that has a
// connection runs on detached instead, until it is answered or its attempt timeout passes, so a
// caller giving up does not lose an answer the upstream charged for. detached should carry no
// deadline of its own and end only when the process stops.
//
// Use MayHaveBilled on the error to learn whether a failed call may still have been charged.
func (c *Client) DoDetached(ctx, detached context.Context, req Request, key []byte) (*Response, error) {
	return c.do(ctx, detached, req, key)
}

// MayHaveBilled reports whether a failed Do or DoDetached may have been charged by the upstream:
// some attempt got a connection (its request may have been written) and was not answered with an
// error status (a timeout, a reset, a cancel after sending, a 2xx whose body was unusable). It is
// false when nothing was sent (dial failures, refusals before sending) or every attempt that was
// sent was answered with an error status, which the upstream does not bill.
func MayHaveBilled(err error) bool {
	var be *billedError
	return errors.As(err, &be)
}

// billedError marks a failure the upstream may have charged for; its message is the wrapped one.
type billedError struct{ error }

func (e *billedError) Unwrap() error { return e.error }

func (c *Client) do(ctx, detached context.Context, req Request, key []byte) (_ *Response, err error) {
	if !validKey(key) {
		return nil, ErrInvalidKey
	}
	target, err := c.endpoint(req.Path)
	if err != nil {
		return nil, err
	}
	if req.Auth != AuthAPIKeyHeader && req.Auth != AuthBearer {
		return nil, fmt.Errorf("upstream: unknown %v", req.Auth)
	}
	gate := gateFrom(ctx)
	billed := false // some attempt may have been charged for
	defer func() {
		if err != nil && billed {
			err = &billedError{err}
		}
	}()
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return nil, ctxError(ctx, attempt-1)
		}
		// Every attempt, retries included, enters the credential's gate: after a 429 only one
		// probe goes until the upstream takes a call again.
		done, gateWaited, gerr := gate.EnterWaited(ctx, c.maxRetryAfter)
		if gerr != nil {
			var we *limiter.WaitError
			if errors.As(gerr, &we) {
				e := causeError(ErrRateLimited, 0, "the upstream asked every caller of this key to wait", nil, we.Wait, attempt-1)
				// Refused past the caller's deadline, not past maxRetryAfter (everyone's limit).
				e.PastDeadline = we.Wait <= c.maxRetryAfter
				return nil, e
			}
			return nil, ctxError(ctx, attempt-1)
		}
		var resume *Wait // set when this attempt followed a wait: a retry's, or the gate's
		if req.Resume != nil && (attempt > 1 || gateWaited) {
			resume = &Wait{Attempt: attempt, Gate: gateWaited}
		}
		o := c.gatedAttempt(ctx, detached, target, req, key, done, resume)
		if o.stopped != nil {
			return nil, o.stopped
		}
		billed = billed || o.billed
		if o.resp != nil {
			return o.resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx, attempt)
		}
		if !o.retryable || attempt > c.maxRetries {
			return nil, o.err(key, o.wait, attempt)
		}
		wait := o.wait
		if !o.hasWait || wait <= 0 {
			wait = c.backoff(attempt)
		}
		if o.hasWait && o.wait > c.maxRetryAfter {
			// Calling again before the upstream said we may would only burn the shared budget;
			// hand the wait to the caller instead.
			return nil, o.err(key, o.wait, attempt)
		}
		if deadline, ok := ctx.Deadline(); ok && wait >= time.Until(deadline) {
			e := o.err(key, wait, attempt)
			e.PastDeadline = true
			return nil, e
		}
		if err := c.sleep(ctx, wait); err != nil {
			return nil, ctxError(ctx, attempt)
		}
	}
}

// gatedAttempt runs one attempt and settles the credential's gate (done) with its outcome. An
// attempt that panics (in Request.Decode, say, which the broker recovers so that only that call
// fails) settles it as Unknown on the way out: a probe left unsettled would hold every later call
// with the key until its deadline, for as long as the process runs. With resume set (the attempt
// followed a wait), Request.Resume is asked first; an attempt it stops is not sent, and settles
// the gate as Unknown too (a probe hands its role to the next caller).
func (c *Client) gatedAttempt(ctx, detached context.Context, target string, req Request, key []byte, done func(limiter.Outcome), resume *Wait) outcome {
	settled := false
	defer func() {
		if !settled {
			done(limiter.Outcome{Unknown: true})
		}
	}()
	if resume != nil {
		if err := req.Resume.Resume(ctx, *resume); err != nil {
			return outcome{stopped: err}
		}
	}
	o := c.attempt(ctx, detached, target, req, key)
	settled = true
	done(o.gateOutcome())
	return o
}

// gateOutcome is what the attempt tells the credential's gate: a 429 closes it for the wait the
// upstream named; any other answer from the upstream opens it; no answer proves nothing.
func (o *outcome) gateOutcome() limiter.Outcome {
	switch {
	case o.resp != nil:
		return limiter.Outcome{}
	case o.kind == ErrRateLimited:
		return limiter.Outcome{Limited: true, Wait: o.wait}
	case o.status != 0:
		return limiter.Outcome{}
	default:
		return limiter.Outcome{Unknown: true}
	}
}

type gateKey struct{}

// WithGate returns ctx carrying g, the half-open gate of the credential whose key the call uses;
// Do enters it before every attempt. Calls without one (verifying a new key) are not gated.
func WithGate(ctx context.Context, g *limiter.Gate) context.Context {
	return context.WithValue(ctx, gateKey{}, g)
}

func gateFrom(ctx context.Context) *limiter.Gate {
	g, _ := ctx.Value(gateKey{}).(*limiter.Gate)
	return g
}

func (o *outcome) err(key []byte, retryAfter time.Duration, attempts int) *Error {
	var e *Error
	if o.status != 0 && o.detail == "" {
		e = statusError(o.kind, o.status, o.code, retryAfter, attempts)
	} else {
		e = causeError(o.kind, o.status, o.detail, o.cause, retryAfter, attempts)
	}
	e.KeyReflected = o.reflected
	return e
}

// ctxError reports the caller's context ending. A deadline is ErrUnavailable (the upstream did not
// answer in the time we had); a cancellation is the caller's own doing and keeps no upstream kind.
func ctxError(ctx context.Context, attempts int) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return causeError(ErrUnavailable, 0, "deadline exceeded before the upstream answered", err, 0, attempts)
	}
	if err == nil {
		// Sleep hook failed without the context ending; treat like a cancellation.
		err = context.Canceled
	}
	return fmt.Errorf("upstream call canceled: %w", err)
}

// attempt sends req once. With detached set, the attempt runs on detached and ctx cuts it off only
// until it has a connection: from then on its request may be on the wire, and the upstream may bill
// it, so it is let run to its answer or its timeout.
func (c *Client) attempt(ctx, detached context.Context, target string, req Request, key []byte) (o outcome) {
	base := ctx
	if detached != nil {
		base = detached
	}
	actx, cancel := context.WithTimeout(base, c.attemptTimeout)
	defer cancel()
	// connected is set when the transport hands the request a connection, before it writes a byte
	// (GotConn runs on the request's goroutine, so it is final once hc.Do returns).
	var (
		mu        sync.Mutex
		connected bool
	)
	setConnected := func() {
		mu.Lock()
		connected = true
		mu.Unlock()
	}
	// WroteHeaders too, in case a transport writes without reporting GotConn: what was written may
	// be billed, so err on the side of counting.
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn:      func(httptrace.GotConnInfo) { setConnected() },
		WroteHeaders: setConnected,
	})
	if detached != nil {
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if !connected {
				cancel()
			}
		})
		defer stop()
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		// An error status is the upstream saying it did not serve the call: not billed.
		o.billed = connected && (o.resp != nil || o.status == 0 || o.status >= 200 && o.status <= 299)
	}()
	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, target, bytes.NewReader(req.Body))
	if err != nil {
		// Only a malformed target can get here, and endpoint already vetted it.
		return outcome{kind: ErrBadRequest, detail: "cannot build request"}
	}
	// Canonical names set directly: Header.Set would canonicalise each name again per call.
	hreq.Header["Content-Type"] = jsonType
	hreq.Header["Accept"] = jsonType
	hreq.Header["User-Agent"] = userAgent
	switch req.Auth {
	case AuthAPIKeyHeader:
		hreq.Header["X-Api-Key"] = []string{string(key)}
	case AuthBearer:
		hreq.Header["Authorization"] = []string{"Bearer " + string(key)}
	}

	resp, err := c.send(hreq)
	if err != nil {
		detail := Redact(err.Error(), key)
		if base.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			detail = "attempt timed out after " + c.attemptTimeout.String()
		}
		return outcome{kind: ErrUnavailable, detail: detail, cause: err, retryable: true}
	}
	defer closeBody(resp.Body)

	switch s := resp.StatusCode; {
	case s >= 200 && s <= 299:
		return c.readSuccess(base, actx, resp, key, req.Decode)
	case s == http.StatusTooManyRequests:
		o := errorOutcome(ErrRateLimited, s, resp, key)
		o.retryable = true
		o.wait, o.hasWait = c.retryAfter(resp.Header, true)
		return o
	case s == http.StatusRequestTimeout || s >= 500 && s <= 599:
		o := errorOutcome(ErrUnavailable, s, resp, key)
		o.retryable = true
		// X-RateLimit-Reset describes the rate window, not an outage, so only Retry-After counts.
		o.wait, o.hasWait = c.retryAfter(resp.Header, false)
		return o
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		return errorOutcome(ErrRejected, s, resp, key)
	case s == http.StatusPaymentRequired:
		return errorOutcome(ErrInsufficientCredits, s, resp, key)
	case s >= 400 && s <= 499:
		return errorOutcome(ErrBadRequest, s, resp, key)
	default:
		return outcome{kind: ErrBadResponse, status: s, detail: "unexpected status " + strconv.Itoa(s)}
	}
}

// send sends one request. With no client timeout and no cookie jar (brokerd's client, and the
// default), it goes straight to the transport: http.Client.Do would only copy the request's
// headers for redirects, which are never followed (a 3xx comes back as it is either way), and set
// up a deadline that is not there. Its errors read as Client.Do's do.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if c.hc.Timeout != 0 || c.hc.Jar != nil {
		return c.hc.Do(req)
	}
	rt := c.hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		return nil, &url.Error{Op: "Post", URL: req.URL.String(), Err: err}
	}
	if resp == nil || resp.Body == nil {
		return nil, &url.Error{Op: "Post", URL: req.URL.String(), Err: fmt.Errorf("http: RoundTripper (%T) returned no response or no body", rt)}
	}
	return resp, nil
}

// Header values every request sends; the transport only reads them.
var (
	jsonType  = []string{"application/json"}
	userAgent = []string{"credbroker"}
)

// errorOutcome reads a non-2xx answer's error.code, keeping it only if it looks like a code and
// cannot be a piece of the key, and notes whether the body or headers echoed the key.
func errorOutcome(kind error, status int, resp *http.Response, key []byte) outcome {
	fs := keyForms(key)
	defer fs.wipe()
	code, reflected := errorCode(resp.Body, &fs)
	// bytes.Contains, not strings.Contains(string(key), ...): that would copy a long key to the heap.
	if !codeRE.MatchString(code) || fs.redact(code) != code || bytes.Contains(key, []byte(code)) {
		code = ""
	}
	_, n := fs.redactHeader(resp.Header)
	return outcome{kind: kind, status: status, code: code, reflected: reflected || n > 0}
}

func (c *Client) readSuccess(ctx, actx context.Context, resp *http.Response, key []byte, decode func([]byte) (any, error)) outcome {
	// Built only when needed: this runs on every successful answer.
	tooLarge := func() outcome {
		return outcome{
			kind:   ErrResponseTooLarge,
			status: resp.StatusCode,
			detail: fmt.Sprintf("%d-byte limit exceeded (Config.MaxResponseBytes)", c.maxBytes),
		}
	}
	if resp.ContentLength > c.maxBytes {
		return tooLarge()
	}
	body, err := readBody(resp.Body, resp.ContentLength, c.maxBytes)
	if err != nil {
		if ctx.Err() != nil {
			return outcome{kind: ErrUnavailable, cause: ctx.Err()} // Do turns this into ctxError
		}
		if actx.Err() != nil {
			return outcome{kind: ErrUnavailable, status: resp.StatusCode, cause: err, retryable: true,
				detail: "attempt timed out after " + c.attemptTimeout.String() + " while reading the response"}
		}
		// The body's bytes may have been spent (credits); a truncated answer is reported, not retried.
		return outcome{kind: ErrBadResponse, status: resp.StatusCode, detail: "response body truncated"}
	}
	if int64(len(body)) > c.maxBytes {
		return tooLarge()
	}
	raw := body
	if decode == nil && !json.Valid(body) {
		// Not passed on, but an echoed key is still worth counting.
		return outcome{kind: ErrBadResponse, status: resp.StatusCode, detail: "response body is not valid JSON",
			reflected: Redact(string(body), key) != string(body)}
	}
	// Redact before anything parses, caches or returns the body: every field, nested or not,
	// reaches the client, the result cache and scavio-mcp's agent.
	fs := keyForms(key)
	defer fs.wipe()
	body, n := fs.redactJSON(body)
	var decoded any
	if decode != nil {
		// Decoding checks the body too, so it gets no separate validity pass.
		if decoded, err = decode(body); err != nil {
			detail := "response body is not valid JSON"
			var se *json.SyntaxError
			if !errors.As(err, &se) {
				detail = err.Error()
			}
			return outcome{kind: ErrBadResponse, status: resp.StatusCode, detail: detail,
				reflected: n > 0 || fs.redact(string(raw)) != string(raw)}
		}
	} else if n > 0 && !json.Valid(body) {
		// RedactJSON keeps JSON valid; if it ever did not, the answer is dropped, never sent on.
		return outcome{kind: ErrBadResponse, status: resp.StatusCode, detail: "response echoed the credential and could not be redacted", reflected: true}
	}
	hdr, hn := fs.redactHeader(resp.Header)
	return outcome{resp: &Response{Status: resp.StatusCode, Body: body, Header: hdr, KeyReflected: n + hn, Decoded: decoded}}
}

// redactHeader returns h with the key redacted from every value and every field whose name holds
// it dropped, and how many fields held it. h itself is returned when no field holds the key (the
// usual case: no copy per call); otherwise a copy. The result never refers to the forms' buffer.
func (fs *forms) redactHeader(h http.Header) (http.Header, int) {
	for name, vs := range h {
		if fs.redact(name) != name {
			return fs.redactHeaderCopy(h)
		}
		for _, v := range vs {
			if fs.redact(v) != v {
				return fs.redactHeaderCopy(h)
			}
		}
	}
	return h, 0
}

// redactHeaderCopy is redactHeader's copy.
func (fs *forms) redactHeaderCopy(h http.Header) (http.Header, int) {
	out := make(http.Header, len(h))
	n := 0
	for name, vs := range h {
		if fs.redact(name) != name {
			n++
			continue
		}
		red := make([]string, len(vs))
		for i, v := range vs {
			if red[i] = fs.redact(v); red[i] != v {
				n++
			}
		}
		out[name] = red
	}
	return out, n
}

// errorCode extracts error.code from a Scavio error body, and reports whether the body echoed the
// key (whose forms fs holds) anywhere. The message is deliberately not read: an upstream may echo
// the key in it.
func errorCode(body io.Reader, fs *forms) (code string, reflected bool) {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	b, err := io.ReadAll(io.LimitReader(body, errorBodyLimit))
	if err != nil {
		return "", false
	}
	if json.Valid(b) {
		_, n := fs.redactJSON(b)
		reflected = n > 0
	} else {
		reflected = fs.redact(string(b)) != string(b)
	}
	if json.Unmarshal(b, &e) != nil {
		return "", reflected
	}
	return e.Error.Code, reflected
}

// retryAfter reads how long the upstream asked us to wait: Retry-After (delta seconds or
// HTTP-date), else, if useReset, X-RateLimit-Reset (unix seconds). A wait is at most
// limiter.MaxPause: the credential's gate probes the upstream again after that however long it
// asked for (a bogus value must not close a credential until restart), so no caller is told to
// wait longer either.
func (c *Client) retryAfter(h http.Header, useReset bool) (time.Duration, bool) {
	// Bounds keep absurd header values from overflowing time.Duration.
	const maxSecs = 1 << 32
	now := c.now()
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
			if secs < 0 {
				return 0, false
			}
			return min(time.Duration(min(secs, maxSecs))*time.Second, limiter.MaxPause), true
		}
		if t, err := http.ParseTime(v); err == nil {
			return min(max(t.Sub(now), 0), limiter.MaxPause), true
		}
	}
	if useReset {
		if v := strings.TrimSpace(h.Get("X-RateLimit-Reset")); v != "" {
			if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs > 0 && secs < now.Unix()+maxSecs {
				if d := time.Unix(secs, 0).Sub(now); d > 0 {
					return min(d, limiter.MaxPause), true
				}
			}
		}
	}
	return 0, false
}

// backoff returns the wait before retry number n (1-based): exponential, with half of it random
// so that callers failing together do not retry together.
func (c *Client) backoff(n int) time.Duration {
	d := maxBackoff
	if n-1 < 30 {
		if e := c.backoffBase << (n - 1); e > 0 && e < maxBackoff {
			d = e
		}
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// closeBody drains a bounded amount so the connection can go back to the pool, then closes.
func closeBody(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, drainLimit))
	_ = rc.Close()
}

// sizedBodyMax is the largest announced body readBody allocates whole before it arrives.
const sizedBodyMax = 256 << 10

// readBody reads a response body of at most max bytes (max+1 read means longer). With the length
// announced (Content-Length, already checked against max) and small, as search answers are, it
// reads into one buffer of that size instead of io.ReadAll's doublings, which allocated about
// twice the body per call; net/http ends such a body after exactly that many bytes, and one that
// ends sooner is io.ErrUnexpectedEOF. A larger body grows as it arrives, so an upstream that
// announces megabytes and stalls does not hold them in every waiting call.
func readBody(r io.Reader, length, max int64) ([]byte, error) {
	if length < 0 || length > max || length > sizedBodyMax {
		return io.ReadAll(io.LimitReader(r, max+1))
	}
	b := make([]byte, length)
	n, err := io.ReadFull(r, b)
	return b[:n], err
}
