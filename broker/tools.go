package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/credbroker/credbroker/broker/answerwire"
	"github.com/credbroker/credbroker/broker/upstream"
)

// Tool maps a tool name to the upstream endpoint it calls and the credential it spends. Adding a
// tool is one entry in the tools table below.
type Tool struct {
	Name       string
	Credential string // name of the stored credential the call spends
	Path       string // upstream endpoint path
	Auth       upstream.Auth
	// body validates a request for this tool and returns the upstream JSON body.
	body func(*SearchRequest) (any, error)
}

// DefaultCredential is the tutorial's name for the Scavio key.
const DefaultCredential = "scavio_api_key"

var tools = []Tool{
	{Name: "web_search", Credential: DefaultCredential, Path: "/api/v1/search", Auth: upstream.AuthAPIKeyHeader, body: webSearchBody},
	{Name: "google_search", Credential: DefaultCredential, Path: "/api/v1/google", Auth: upstream.AuthBearer, body: googleSearchBody},
}

// DefaultTool is the tool a request without a tool name runs.
const DefaultTool = "web_search"

// LookupTool returns the tool named name.
func LookupTool(name string) (Tool, bool) {
	for _, t := range tools {
		if t.Name == name {
			return t, true
		}
	}
	return Tool{}, false
}

// Tools returns the tool table, in declaration order.
func Tools() []Tool { return slices.Clone(tools) }

// ToolNames returns every known tool name.
func ToolNames() []string {
	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.Name
	}
	return names
}

// ToolsSpending returns the tools that spend the credential name, in table order; none means no
// tool ever reads it (typically a key stored under the wrong name).
func ToolsSpending(name string) []string {
	var out []string
	for _, t := range tools {
		if t.Credential == name {
			out = append(out, t.Name)
		}
	}
	return out
}

// SpentCredentials returns the credential names the tools spend, each once, in table order.
func SpentCredentials() []string {
	var out []string
	for _, t := range tools {
		if !slices.Contains(out, t.Credential) {
			out = append(out, t.Credential)
		}
	}
	return out
}

// credentialWarnings lists, for Status, each tool whose credential is not stored (its calls fail
// with FailedPrecondition) and each stored credential no tool spends: both are what a first run
// gets wrong, e.g. a key put as "scavio" while the tools spend "scavio_api_key".
func credentialWarnings(stored []string) []string {
	var out []string
	for _, t := range tools {
		if !slices.Contains(stored, t.Credential) {
			out = append(out, fmt.Sprintf("tool %s: credential %s is not stored; its calls fail until `brokerctl credential put %s`", t.Name, t.Credential, t.Credential))
		}
	}
	for _, name := range stored {
		if len(ToolsSpending(name)) == 0 {
			out = append(out, fmt.Sprintf("credential %s is used by no tool (the tools spend %s); put the key under that name, and `brokerctl credential delete %s` if it was a mistake",
				name, strings.Join(SpentCredentials(), ", "), name))
		}
	}
	return out
}

// SearchRequest is one tool call's arguments.
type SearchRequest struct {
	Tool       string
	Query      string
	NumResults int
	Google     GoogleOptions
	NoCache    bool // fresh results even if a cached answer exists
}

// GoogleOptions are Scavio contract B's optional fields.
type GoogleOptions struct {
	SearchType   string
	CountryCode  string
	Language     string
	Page         int
	Device       string
	NFPR         *bool
	LightRequest *bool
}

// Limits from Scavio's API: a longer query is refused upstream anyway, so refuse it before
// spending a credit.
const (
	MaxQueryLen      = 500
	MaxNumResults    = 100
	DefaultNumResult = 5
	maxPage          = 100
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
}

func validateQuery(q string) error {
	switch {
	case !utf8.ValidString(q):
		return invalid("query must be valid UTF-8")
	case strings.TrimSpace(q) == "":
		return invalid("query must not be empty")
	case utf8.RuneCountInString(q) > MaxQueryLen:
		return invalid("query is %d characters; the limit is %d", utf8.RuneCountInString(q), MaxQueryLen)
	}
	return nil
}

// ResultsWanted is how many results the caller of tool asked for (the default when it did not
// say), or 0 where the tool takes no count (google_search pages instead).
func ResultsWanted(tool string, r SearchRequest) int {
	if tool != "web_search" {
		return 0
	}
	if r.NumResults > 0 {
		return r.NumResults
	}
	return DefaultNumResult
}

func webSearchBody(r *SearchRequest) (any, error) {
	if err := validateQuery(r.Query); err != nil {
		return nil, err
	}
	if r.Google != (GoogleOptions{}) {
		return nil, invalid("google_search options are not accepted by web_search")
	}
	n := r.NumResults
	switch {
	case n == 0:
		n = DefaultNumResult
	case n < 1 || n > MaxNumResults:
		return nil, invalid("num_results must be between 1 and %d, got %d", MaxNumResults, n)
	}
	return struct {
		Query      string `json:"query"`
		NumResults int    `json:"num_results"`
	}{r.Query, n}, nil
}

var (
	searchTypes = []string{"classic", "news", "maps", "images", "lens"}
	devices     = []string{"desktop", "mobile"}
)

// asciiLower lowercases ASCII letters only: strings.ToLower would turn U+212A (KELVIN SIGN) into
// "k" and let it pass as a code.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func isLowerAlpha(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return true
}

func googleSearchBody(r *SearchRequest) (any, error) {
	if err := validateQuery(r.Query); err != nil {
		return nil, err
	}
	if r.NumResults != 0 {
		return nil, invalid("num_results is not accepted by google_search (use page)")
	}
	g := r.Google
	if g.SearchType != "" && !slices.Contains(searchTypes, g.SearchType) {
		return nil, invalid("search_type must be one of %s", strings.Join(searchTypes, ", "))
	}
	if g.CountryCode != "" && !isLowerAlpha(asciiLower(g.CountryCode), 2) {
		return nil, invalid("country_code must be an ISO 3166-1 alpha-2 code such as \"us\"")
	}
	if g.Language != "" && !isLowerAlpha(asciiLower(g.Language), 2) {
		return nil, invalid("language must be an ISO 639-1 code such as \"en\"")
	}
	if g.Page < 0 || g.Page > maxPage {
		return nil, invalid("page must be between 1 and %d", maxPage)
	}
	if g.Device != "" && !slices.Contains(devices, g.Device) {
		return nil, invalid("device must be desktop or mobile")
	}
	if g.SearchType == "news" && g.Device == "mobile" {
		return nil, invalid("news search supports only device desktop")
	}
	body := map[string]any{"query": r.Query}
	if g.SearchType != "" {
		body["search_type"] = g.SearchType
	}
	if g.CountryCode != "" {
		body["country_code"] = asciiLower(g.CountryCode)
	}
	if g.Language != "" {
		body["language"] = asciiLower(g.Language)
	}
	if g.Page != 0 {
		body["page"] = g.Page
	}
	if g.Device != "" {
		body["device"] = g.Device
	}
	if g.NFPR != nil {
		body["nfpr"] = *g.NFPR
	}
	if g.LightRequest != nil {
		body["light_request"] = *g.LightRequest
	}
	return body, nil
}

// Result is one upstream result: the common fields plus the whole object.
type Result struct {
	Title, URL, Snippet string
	Position            int
	Raw                 map[string]any
}

// SearchResult is what a search returns to the caller. Its results are read with Wire (the answer
// transcoded to the gRPC response's wire bytes, or to the HTTP front's JSON) or Decoded (maps); an
// edge that converts them for its caller can keep its conversion with the cached answer (Encoded),
// so a cache hit neither decodes nor converts again.
type SearchResult struct {
	Tool              string
	Credential        string
	CredentialVersion uint64
	Cached            bool          // served from the result cache
	CacheAge          time.Duration // age of the cached answer
	Credits           uint64        // upstream credits this call spent (0 when cached)
	RateLimitWait     time.Duration // how long the call waited for a slot of the credential's rate limiter

	// results and metadata are the decoded answer, nil until Decoded decodes the body (src, or
	// ans's on a cache hit); wire is the answer as the gRPC edge sends it, made by the upstream
	// client's decode on a miss (decodeAnswer), on a hit by Wire. An edge reads whichever it
	// needs, so a miss builds no maps unless an edge asks for them.
	results  []Result
	metadata map[string]any // every top-level upstream field except "results"
	decoded  bool
	wire     *answerwire.Answer
	// src is the body the call's answer was decoded from (nil on a hit: ans has it).
	src []byte
	// ans is the answer as the result cache keeps it (nil when the answer is not cached).
	ans *cachedAnswer
	// body is the length of the upstream answer the results were decoded from (0: unknown).
	body int64
	// rawBody is that answer, from spendUpstream until spend takes it for the cache.
	rawBody []byte
}

// cachedAnswer is an upstream answer as the result cache keeps it: the body bytes (redacted by the
// upstream client before anything saw them), not their decoding, which as maps took about four
// times as much heap and cost the garbage collector a walk of every cached string; plus one
// encoding an edge made of it (Encoded). It is shared by every hit and never changes but for enc.
type cachedAnswer struct {
	tool, credential string
	version          uint64
	body             []byte
	enc              atomic.Pointer[encoding]
}

type encoding struct {
	key   EncodingKey
	bytes []byte
}

// EncodingKey names an edge's encoding of an answer: which edge (its own name), and how many
// results it kept (0: all).
type EncodingKey struct {
	Edge    string
	Results int
}

// cachedSize is what an answer is charged in the result cache: its body, one encoding (Encoded
// keeps none larger than maxEncodingFactor times the body) and the structs around them.
func cachedSize(bodyLen int) int64 { return int64((1+maxEncodingFactor)*bodyLen) + 512 }

// maxEncodingFactor bounds an encoding kept with a cached answer, over the answer's body.
const maxEncodingFactor = 2

// Decoded returns the results in upstream order and every other top-level field of the upstream
// answer. It decodes the body on first use, a miss's as a hit's (the result is the caller's own
// to keep): the edges read Wire instead, so a search builds no maps unless something asks.
func (r *SearchResult) Decoded() ([]Result, map[string]any, error) {
	if body := r.answerBody(); !r.decoded && body != nil {
		results, meta, err := parseResults(body)
		if err != nil {
			return nil, nil, err
		}
		r.results, r.metadata, r.decoded = results, meta, true
	}
	return r.results, r.metadata, nil
}

// Wire returns the answer as the gRPC edge sends it (package answerwire): the one the upstream
// client's decode made on a miss, or on a cache hit the cached body's, transcoded now. It fails
// as Decoded does for a body that is not an answer. It returns nil and no error in the one case
// the transcoder should never meet, a body it refuses that encoding/json accepts: the edge then
// converts Decoded's results as before.
func (r *SearchResult) Wire() (*answerwire.Answer, error) {
	if r.wire != nil {
		return r.wire, nil
	}
	body := r.answerBody()
	if body == nil {
		return nil, nil
	}
	a, err := answerwire.Transcode(body)
	if err != nil {
		// Word the refusal exactly as decoding it the slow way does.
		if _, _, err := parseResults(body); err != nil {
			return nil, err
		}
		return nil, nil
	}
	r.wire = a
	return a, nil
}

// answerBody is the upstream answer behind r, or nil if it is not kept.
func (r *SearchResult) answerBody() []byte {
	if r.ans != nil {
		return r.ans.body
	}
	return r.src
}

// reportedCredits reads the credits the upstream says the call cost, if it says.
func (r *SearchResult) reportedCredits() (uint64, bool) {
	if r.wire != nil {
		return reportedCredits(r.wire.Number)
	}
	return reportedCredits(func(k string) (float64, bool) { f, ok := r.metadata[k].(float64); return f, ok })
}

// Encoded returns the edge's encoding of the answer named by key: the one kept with the cached
// answer if it was made already, else build's, which is kept for the next hit when the answer is
// cached (one encoding per answer; an edge asking with another key replaces it). build must
// depend on the answer and key alone, never on the caller: every later hit gets its bytes. The
// bytes are shared: never modify them.
func (r *SearchResult) Encoded(key EncodingKey, build func() ([]byte, error)) ([]byte, error) {
	if r.ans != nil {
		if e := r.ans.enc.Load(); e != nil && e.key == key {
			return e.bytes, nil
		}
	}
	b, err := build()
	if err != nil {
		return nil, err
	}
	if r.ans != nil && len(b) <= maxEncodingFactor*len(r.ans.body) {
		r.ans.enc.Store(&encoding{key: key, bytes: b})
	}
	return b, nil
}

// MapJSON is the answer as the HTTP front writes it, built from the decoded maps: encoding/json's
// Marshal of every top-level field but "results", and "results" holding the first want results'
// objects (all if want is 0). The front takes it only where the transcoder refused a body that
// encoding/json accepts; the transcoder's fuzz test holds the transcoder to it.
func (r *SearchResult) MapJSON(want int) ([]byte, error) {
	results, meta, err := r.Decoded()
	if err != nil {
		return nil, err
	}
	return mapJSON(results, meta, want)
}

func mapJSON(results []Result, meta map[string]any, want int) ([]byte, error) {
	out := make(map[string]any, len(meta)+1)
	for k, v := range meta {
		out[k] = v
	}
	if want > 0 && len(results) > want {
		results = results[:want]
	}
	raws := make([]map[string]any, 0, len(results))
	for _, r := range results {
		raws = append(raws, r.Raw)
	}
	out["results"] = raws
	return json.Marshal(out)
}

// hit is a caller's result for a cached answer.
func (a *cachedAnswer) hit() *SearchResult {
	return &SearchResult{Tool: a.tool, Credential: a.credential, CredentialVersion: a.version, ans: a, body: int64(len(a.body))}
}

// BodyBytes is the length of the upstream answer behind the result, or 0 when unknown.
func (r *SearchResult) BodyBytes() int64 { return r.body }

// decodedAnswer is an upstream answer decoded by the upstream client (upstream.Request.Decode):
// its wire form, or (only where the transcoder refused what encoding/json accepts, which the
// fuzz test says never happens) its maps.
type decodedAnswer struct {
	wire    *answerwire.Answer
	results []Result
	meta    map[string]any
}

// decodeAnswer is upstream.Request.Decode for searches: the upstream client decodes the redacted
// body once, which also checks it is JSON (no separate json.Valid pass). It transcodes the body
// straight to the wire form the gRPC edge sends (no maps, no structpb); a body the transcoder
// refuses is decoded the old way, so the error is decodeResults' own, word for word. Its errors
// never quote the body; a JSON syntax error is passed as is (the client reports "not valid JSON").
func decodeAnswer(body []byte) (any, error) {
	if a, err := answerwire.Transcode(body); err == nil {
		return decodedAnswer{wire: a}, nil
	}
	return decodeAnswerMaps(body)
}

// decodeAnswerMaps is decodeAnswer by encoding/json alone, as it was before the transcoder; it
// words every refusal, and the tests hold the transcoder to it.
func decodeAnswerMaps(body []byte) (any, error) {
	results, meta, err := decodeResults(body)
	if err != nil {
		return nil, err
	}
	return decodedAnswer{results: results, meta: meta}, nil
}

// parseResults decodes an upstream response body. The body is the upstream's, so its content is
// never echoed into an error.
func parseResults(body []byte) ([]Result, map[string]any, error) {
	results, meta, err := decodeResults(body)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s", upstream.ErrBadResponse, decodeDetail(err))
	}
	return results, meta, nil
}

// decodeDetail is how parseResults words a decodeResults error.
func decodeDetail(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "upstream response is not a JSON object"
	}
	return err.Error()
}

// decodeResults is parseResults without the ErrBadResponse wrapping.
func decodeResults(body []byte) ([]Result, map[string]any, error) {
	var top map[string]any
	if err := json.Unmarshal(body, &top); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, nil, err
		}
		return nil, nil, errors.New("upstream response is not a JSON object")
	}
	rawResults, _ := top["results"].([]any)
	if _, ok := top["results"]; ok && rawResults == nil && top["results"] != nil {
		return nil, nil, errors.New("upstream \"results\" is not an array")
	}
	delete(top, "results")
	out := make([]Result, 0, len(rawResults))
	for i, item := range rawResults {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, nil, fmt.Errorf("upstream result %d is not an object", i)
		}
		r := Result{
			Title:    firstString(obj, "title"),
			URL:      firstString(obj, "url", "link"),
			Snippet:  firstString(obj, "snippet", "description", "content"),
			Position: i + 1,
			Raw:      obj,
		}
		if p, ok := obj["position"].(float64); ok && p >= 1 && p <= 1e6 {
			r.Position = int(p)
		}
		out = append(out, r)
	}
	return out, top, nil
}

func firstString(obj map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, ok := obj[k].(string); ok {
			return s
		}
	}
	return ""
}
