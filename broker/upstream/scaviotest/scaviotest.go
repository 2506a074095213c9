// Package scaviotest is a fake Scavio search API for tests and the quickstart, in the manner of
// net/http/httptest: it serves both contracts (A: POST /api/v1/search with x-api-key; B: POST
// /api/v1/google with Authorization: Bearer), checks keys against a set the test controls, answers
// with results derived only from the query, records what it received, and can be told to fail.
//
// It holds test keys only, in memory. It must never be pointed at, or proxy to, the real Scavio,
// and it must never be linked into brokerd or brokerctl.
package scaviotest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Paths of the two contracts.
const (
	SearchPath = "/api/v1/search" // contract A
	GooglePath = "/api/v1/google" // contract B
)

// Fixed rate-limit advertisement: plausible for a free plan, and fixed so tests can rely on it.
const (
	RateLimit          = 10
	RateLimitRemaining = 9
)

// maxBody bounds request bodies; real queries are at most 500 characters.
const maxBody = 1 << 20

// Fault makes the server misbehave. The zero Fault means normal behaviour.
type Fault struct {
	Status     int           // force this status with a Scavio-style error body {"error":{"code":...,"message":...}}
	RetryAfter string        // Retry-After header value to send with the forced status
	Times      int           // apply the fault to the next N requests only (0 = until cleared)
	Delay      time.Duration // sleep before answering; a request whose context ends first gets no answer
	EchoKey    bool          // put the presented key in error messages (forced and 401), to test redaction
	// EchoKeyInResults answers a successful search with the presented key in a result's snippet
	// and URL, in nested metadata (raw, base64 and with JSON-escaped slashes) and in a header, as
	// an upstream that reflects request fields would: for the redaction canary tests.
	EchoKeyInResults bool
	// Arrived, if set, receives a value once each faulty request has been read and recorded, so a
	// test can act while the upstream holds it (no sleeps). The send gives up if the request's
	// context ends first.
	Arrived chan<- struct{}
	// Hold, if set, keeps each faulty request waiting until Hold is closed (or its context ends:
	// then it gets no answer), after Arrived and Delay.
	Hold <-chan struct{}
	// CreditsUsed, if set, is the credits_used a successful answer reports, instead of the
	// contract's 1 or 2.
	CreditsUsed int
}

// Recorded is one request as the server saw it.
type Recorded struct {
	Method string
	Path   string
	Auth   string // "x-api-key", "bearer", or "" if neither was presented
	Key    string // the presented key (test keys only), so rotation tests can tell which key was used
	KeyOK  bool   // the key was valid and presented in the style the path requires
	Body   map[string]any
	Time   time.Time
}

// Server is a fake Scavio. Its methods are safe for concurrent use.
type Server struct {
	URL string // base URL, e.g. http://127.0.0.1:PORT; empty for an unstarted server

	srv *httptest.Server

	mu        sync.Mutex
	keys      map[string]bool
	fault     Fault
	faultLeft int // remaining applications when fault.Times > 0
	reqs      []Recorded
}

// NewServer starts a fake Scavio on a loopback port that accepts the given keys. Call Close when
// done.
func NewServer(keys ...string) *Server {
	s := NewUnstartedHandler(keys...)
	s.srv = httptest.NewServer(s.Handler())
	s.URL = s.srv.URL
	return s
}

// NewUnstartedHandler returns a fake that is not listening anywhere, for a command that serves
// Handler on its own listener. URL stays empty and Close does nothing.
func NewUnstartedHandler(keys ...string) *Server {
	s := &Server{keys: make(map[string]bool)}
	for _, k := range keys {
		s.keys[k] = true
	}
	return s
}

// Close shuts the test server down, waiting for requests in flight.
func (s *Server) Close() {
	if s.srv != nil {
		s.srv.Close()
	}
}

// AddKey makes key valid, as creating a key in the Scavio dashboard would.
func (s *Server) AddKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[key] = true
}

// RevokeKey makes key invalid from the next request on.
func (s *Server) RevokeKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, key)
}

// SetKeys replaces the whole set of valid keys, as reloading a keys file does.
func (s *Server) SetKeys(keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = make(map[string]bool, len(keys))
	for _, k := range keys {
		s.keys[k] = true
	}
}

// SetFault installs f for the following requests; the zero Fault restores normal behaviour.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	s.faultLeft = f.Times
}

// Requests returns a copy of every request received so far, oldest first.
func (s *Server) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Recorded, len(s.reqs))
	for i, r := range s.reqs {
		r.Body = maps.Clone(r.Body)
		out[i] = r
	}
	return out
}

// Count returns how many requests the server has received.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

// Handler returns the fake's HTTP handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	setRateLimitHeaders(w.Header(), RateLimitRemaining)

	authStyle, key := presentedKey(r)
	raw, readErr := readBody(w, r)
	var bodyMap map[string]any
	if readErr == nil {
		_ = json.Unmarshal(raw, &bodyMap) // nil if the body is not a JSON object
	}

	s.mu.Lock()
	wantStyle := map[string]string{SearchPath: "x-api-key", GooglePath: "bearer"}[r.URL.Path]
	keyOK := key != "" && authStyle == wantStyle && s.keys[key]
	s.reqs = append(s.reqs, Recorded{
		Method: r.Method, Path: r.URL.Path, Auth: authStyle, Key: key, KeyOK: keyOK,
		Body: bodyMap, Time: time.Now(),
	})
	f, faulty := s.takeFault()
	s.mu.Unlock()

	if faulty && f.Arrived != nil {
		select {
		case f.Arrived <- struct{}{}:
		case <-r.Context().Done():
			return
		}
	}
	if faulty && f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}

	if faulty && f.Hold != nil {
		select {
		case <-f.Hold:
		case <-r.Context().Done():
			return
		}
	}

	if wantStyle == "" {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	if faulty && f.Status != 0 {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		if f.Status == http.StatusTooManyRequests {
			setRateLimitHeaders(w.Header(), 0)
		}
		msg := http.StatusText(f.Status)
		if f.EchoKey {
			msg += " for key " + key
		}
		writeError(w, f.Status, codeFor(f.Status), msg)
		return
	}
	if !keyOK {
		msg := "invalid api key"
		if faulty && f.EchoKey {
			msg += ": " + key
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", msg)
		return
	}
	if readErr != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "request body too large")
		return
	}
	var (
		resp any
		err  error
	)
	if r.URL.Path == SearchPath {
		resp, err = searchA(raw)
	} else {
		resp, err = searchB(raw)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if faulty && f.CreditsUsed != 0 {
		switch r := resp.(type) {
		case *SearchResponse:
			r.CreditsUsed = f.CreditsUsed
		case *GoogleResponse:
			r.CreditsUsed = f.CreditsUsed
		}
	}
	if faulty && f.EchoKeyInResults {
		writeEchoingKey(w, resp, key)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// writeEchoingKey writes resp with key reflected in a result, in metadata and in a header.
func writeEchoingKey(w http.ResponseWriter, resp any, key string) {
	b, _ := json.Marshal(resp)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if rs, _ := m["results"].([]any); len(rs) > 0 {
		if r0, ok := rs[0].(map[string]any); ok {
			r0["snippet"] = "the key you sent is " + key
			r0["url"] = "https://example.com/echo?api_key=" + url.QueryEscape(key)
		}
	}
	m["request"] = map[string]any{"headers": map[string]any{"x-api-key": key, "b64": base64.StdEncoding.EncodeToString([]byte(key))}}
	b, _ = json.Marshal(m)
	// Escape '/' as PHP's json_encode does: the key must still be found behind the escape.
	b = bytes.ReplaceAll(b, []byte("/"), []byte(`\/`))
	w.Header().Set("X-Echo-Api-Key", key)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// takeFault returns the fault to apply to this request, consuming one of its Times. s.mu is held.
func (s *Server) takeFault() (Fault, bool) {
	if s.fault == (Fault{}) {
		return Fault{}, false
	}
	f := s.fault
	if f.Times > 0 {
		s.faultLeft--
		if s.faultLeft <= 0 {
			s.fault = Fault{}
		}
	}
	return f, true
}

func presentedKey(r *http.Request) (style, key string) {
	if k := r.Header.Get("x-api-key"); k != "" {
		return "x-api-key", k
	}
	if a := r.Header.Get("Authorization"); len(a) > len("Bearer ") && strings.EqualFold(a[:len("Bearer ")], "Bearer ") {
		return "bearer", a[len("Bearer "):]
	}
	return "", ""
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
}

func setRateLimitHeaders(h http.Header, remaining int) {
	h.Set("X-RateLimit-Limit", strconv.Itoa(RateLimit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10))
}

func codeFor(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusPaymentRequired:
		return "insufficient_credits"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusTooManyRequests:
		return "rate_limit_exceeded"
	case http.StatusServiceUnavailable:
		return "service_unavailable"
	}
	if status >= 500 {
		return "internal_error"
	}
	return "error"
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	writeJSON(w, status, map[string]detail{"error": {Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal_error","message":"encode"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// decodeStrict rejects unknown fields and trailing data: a broker that sends contract A's fields to
// contract B should fail loudly here, not silently succeed.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %v", err)
	}
	if dec.More() {
		return errors.New("invalid JSON body: trailing data")
	}
	return nil
}

func checkQuery(q *string) error {
	if q == nil {
		return errors.New("query is required")
	}
	if n := utf8.RuneCountInString(*q); n < 1 || n > 500 {
		return errors.New("query must be 1-500 characters")
	}
	return nil
}

// Result is one search result. Extra fields are contract B's richer output.
type Result struct {
	Title         string `json:"title"`
	URL           string `json:"url"`
	Snippet       string `json:"snippet"`
	Position      int    `json:"position"`
	Source        string `json:"source,omitempty"`
	DisplayedLink string `json:"displayed_link,omitempty"`
	Date          string `json:"date,omitempty"`
	Thumbnail     string `json:"thumbnail,omitempty"`
	Address       string `json:"address,omitempty"`
}

// SearchResponse is contract A's answer.
type SearchResponse struct {
	Query       string   `json:"query"`
	Results     []Result `json:"results"`
	CreditsUsed int      `json:"credits_used"`
}

// GoogleResponse is contract B's answer.
type GoogleResponse struct {
	Query       string   `json:"query"`
	SearchType  string   `json:"search_type"`
	Page        int      `json:"page"`
	Results     []Result `json:"results"`
	CreditsUsed int      `json:"credits_used"`
}

func searchA(raw []byte) (*SearchResponse, error) {
	var req struct {
		Query      *string `json:"query"`
		NumResults *int    `json:"num_results"`
	}
	if err := decodeStrict(raw, &req); err != nil {
		return nil, err
	}
	if err := checkQuery(req.Query); err != nil {
		return nil, err
	}
	n := 5
	if req.NumResults != nil {
		n = *req.NumResults
	}
	if n < 1 || n > 100 {
		return nil, errors.New("num_results must be 1-100")
	}
	resp := &SearchResponse{Query: *req.Query, Results: make([]Result, n), CreditsUsed: 1}
	for i := range resp.Results {
		resp.Results[i] = result(*req.Query, "classic", i+1)
		resp.Results[i].Source = "fake"
		resp.Results[i].DisplayedLink = "" // contract B only
	}
	return resp, nil
}

var twoLetters = regexp.MustCompile(`^[A-Za-z]{2}$`)

func searchB(raw []byte) (*GoogleResponse, error) {
	var req struct {
		Query        *string `json:"query"`
		SearchType   *string `json:"search_type"`
		CountryCode  *string `json:"country_code"`
		Language     *string `json:"language"`
		Page         *int    `json:"page"`
		Device       *string `json:"device"`
		NFPR         *bool   `json:"nfpr"`
		LightRequest *bool   `json:"light_request"`
	}
	if err := decodeStrict(raw, &req); err != nil {
		return nil, err
	}
	if err := checkQuery(req.Query); err != nil {
		return nil, err
	}
	st := "classic"
	if req.SearchType != nil {
		st = *req.SearchType
	}
	switch st {
	case "classic", "news", "maps", "images", "lens":
	default:
		return nil, errors.New("search_type must be one of classic, news, maps, images, lens")
	}
	if req.CountryCode != nil && !twoLetters.MatchString(*req.CountryCode) {
		return nil, errors.New("country_code must be an ISO 3166-1 alpha-2 code")
	}
	if req.Language != nil && !twoLetters.MatchString(*req.Language) {
		return nil, errors.New("language must be an ISO 639-1 code")
	}
	page := 1
	if req.Page != nil {
		page = *req.Page
	}
	if page < 1 || page > 100 {
		return nil, errors.New("page must be 1-100")
	}
	if req.Device != nil {
		switch d := *req.Device; {
		case d != "desktop" && d != "mobile":
			return nil, errors.New("device must be desktop or mobile")
		case st == "news" && d != "desktop":
			return nil, errors.New("news search supports only device desktop")
		}
	}
	credits := 1
	if req.LightRequest != nil && !*req.LightRequest {
		credits = 2
	}
	resp := &GoogleResponse{Query: *req.Query, SearchType: st, Page: page, Results: make([]Result, 10), CreditsUsed: credits}
	for i := range resp.Results {
		resp.Results[i] = result(*req.Query, st, (page-1)*10+i+1)
	}
	return resp, nil
}

// result is deterministic in (query, searchType, position) so tests can predict every field.
func result(query, searchType string, pos int) Result {
	u := fmt.Sprintf("https://example.com/%s/%d?q=%s", searchType, pos, url.QueryEscape(query))
	r := Result{
		Title:         fmt.Sprintf("Result %d for %s", pos, query),
		URL:           u,
		Snippet:       fmt.Sprintf("Fake %s result %d about %s.", searchType, pos, query),
		Position:      pos,
		DisplayedLink: fmt.Sprintf("example.com › %s › %d", searchType, pos),
	}
	switch searchType {
	case "news":
		r.Date = "2025-01-01"
	case "images", "lens":
		r.Thumbnail = fmt.Sprintf("https://example.com/thumb/%d.png", pos)
	case "maps":
		r.Address = fmt.Sprintf("%d Example Street", pos)
	}
	return r
}
