package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Tool names, as brokerd scopes tokens to them.
const (
	webSearch    = "web_search"
	googleSearch = "google_search"
)

// toolNames lists every tool this server can offer. (tools/list sorts them by name.)
func toolNames() []string { return []string{webSearch, googleSearch} }

// webSearchInput is web_search's arguments. Limits the struct tags cannot express are added in
// webSearchSchema; brokerd checks them again.
type webSearchInput struct {
	Query      string `json:"query" jsonschema:"What to search the web for, as you would type it into a search engine."`
	NumResults int    `json:"num_results,omitempty" jsonschema:"How many results to return, 1-100. Default 5; ask for more only when you need breadth."`
}

// googleSearchInput is google_search's arguments.
type googleSearchInput struct {
	Query       string `json:"query" jsonschema:"What to search Google for, as you would type it into Google."`
	SearchType  string `json:"search_type,omitempty" jsonschema:"Kind of results: classic (web pages, the default), news (recent articles), maps (places and businesses), images, or lens (visual search)."`
	CountryCode string `json:"country_code,omitempty" jsonschema:"Search as if from this country: an ISO 3166-1 alpha-2 code such as us, gb, de."`
	Language    string `json:"language,omitempty" jsonschema:"Language of the results: an ISO 639-1 code such as en, fr, ja."`
	Page        int    `json:"page,omitempty" jsonschema:"Result page, 1-100, for results beyond the first page. Default 1."`
	Device      string `json:"device,omitempty" jsonschema:"Search as this kind of device: desktop or mobile. News supports desktop only."`
}

// searchOutput is the structured content of both tools.
type searchOutput struct {
	Results []result `json:"results" jsonschema:"The results, best first."`
}

type result struct {
	Title    string `json:"title" jsonschema:"Title of the result page."`
	URL      string `json:"url" jsonschema:"URL of the result page."`
	Snippet  string `json:"snippet" jsonschema:"Text the search engine shows under the title."`
	Position int    `json:"position" jsonschema:"1-based rank the search engine gave the result."`
}

// Limits from brokerd (broker/tools.go), repeated in the schemas so an LLM sees them before it
// spends a call.
const (
	maxQueryLen   = 500
	maxNumResults = 100
	defNumResults = 5
	maxPage       = 100
)

func webSearchSchema() *jsonschema.Schema {
	s := schemaFor[webSearchInput]()
	queryLimits(s.Properties["query"])
	n := s.Properties["num_results"]
	n.Minimum, n.Maximum, n.Default = ptr(1.0), ptr(float64(maxNumResults)), json.RawMessage(fmt.Sprint(defNumResults))
	return s
}

func googleSearchSchema() *jsonschema.Schema {
	s := schemaFor[googleSearchInput]()
	queryLimits(s.Properties["query"])
	s.Properties["search_type"].Enum = []any{"classic", "news", "maps", "images", "lens"}
	s.Properties["search_type"].Default = json.RawMessage(`"classic"`)
	s.Properties["device"].Enum = []any{"desktop", "mobile"}
	for _, name := range []string{"country_code", "language"} {
		s.Properties[name].Pattern = "^[A-Za-z]{2}$"
	}
	p := s.Properties["page"]
	p.Minimum, p.Maximum = ptr(1.0), ptr(float64(maxPage))
	return s
}

func queryLimits(q *jsonschema.Schema) {
	q.MinLength, q.MaxLength = ptr(1), ptr(maxQueryLen)
}

// schemaFor infers T's schema. The types are this file's own, so a failure is a bug.
func schemaFor[T any]() *jsonschema.Schema {
	s, err := jsonschema.For[T](nil)
	if err != nil {
		panic(fmt.Sprintf("bug: schema for %T: %v", *new(T), err))
	}
	return s
}

func ptr[T any](v T) *T { return &v }

var readOnly = &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: ptr(true)}

// newServer builds the MCP server offering b.tools.
func newServer(b *backend, log *slog.Logger) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "scavio-mcp", Title: "Scavio search via credbroker", Version: version}, &mcp.ServerOptions{
		Instructions: "Web and Google search. Results come as a numbered list (title, URL, snippet) and as structured content. " +
			"If a tool returns an error, its text says who must act: fix your arguments, wait and retry, or tell the user what the operator must do.",
		// Tools are fixed for the life of the process; say so.
		Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}},
	})
	h := &handlers{b: b, log: log}
	if slices.Contains(b.tools, webSearch) {
		mcp.AddTool(srv, &mcp.Tool{
			Name:  webSearch,
			Title: "Web search",
			Description: "Search the web and get the top results as title, URL and snippet. Use it for current facts, " +
				"documentation, news or anything beyond your training data; fetch a result's URL for the full text.",
			InputSchema: webSearchSchema(),
			Annotations: readOnly,
		}, h.webSearch)
	}
	if slices.Contains(b.tools, googleSearch) {
		mcp.AddTool(srv, &mcp.Tool{
			Name:  googleSearch,
			Title: "Google search",
			Description: "Search Google and get ranked results as title, URL and snippet. Choose search_type for news, " +
				"maps (places), images or lens instead of classic web results; set country_code and language to localize, " +
				"page to go beyond the first page, device to see mobile results.",
			InputSchema: googleSearchSchema(),
			Annotations: readOnly,
		}, h.googleSearch)
	}
	return srv
}

type handlers struct {
	b   *backend
	log *slog.Logger
}

func (h *handlers) webSearch(ctx context.Context, _ *mcp.CallToolRequest, in webSearchInput) (*mcp.CallToolResult, searchOutput, error) {
	return h.search(ctx, &credbrokerv1.SearchRequest{Tool: webSearch, Query: in.Query, NumResults: int32(in.NumResults)})
}

func (h *handlers) googleSearch(ctx context.Context, _ *mcp.CallToolRequest, in googleSearchInput) (*mcp.CallToolResult, searchOutput, error) {
	return h.search(ctx, &credbrokerv1.SearchRequest{
		Tool:  googleSearch,
		Query: in.Query,
		Google: &credbrokerv1.GoogleSearchOptions{
			SearchType: in.SearchType, CountryCode: in.CountryCode, Language: in.Language,
			Page: int32(in.Page), Device: in.Device,
		},
	})
}

// search runs req through brokerd with the tool call's context, so a cancelled MCP request cancels
// the gRPC call and brokerd's upstream call. A returned error becomes a tool result with isError
// set (the SDK does that), never a protocol error.
func (h *handlers) search(ctx context.Context, req *credbrokerv1.SearchRequest) (*mcp.CallToolResult, searchOutput, error) {
	if h.b.unusable != "" {
		return nil, searchOutput{}, errors.New(h.b.unusable)
	}
	resp, err := h.b.client.Search(ctx, req)
	if err != nil {
		h.log.Warn("search failed", "tool", req.GetTool(), "err", err)
		return nil, searchOutput{}, errors.New(toolErrorText(req.GetTool(), err))
	}
	out := searchOutput{Results: make([]result, 0, len(resp.GetResults()))}
	for _, r := range resp.GetResults() {
		out.Results = append(out.Results, result{Title: r.GetTitle(), URL: r.GetUrl(), Snippet: r.GetSnippet(), Position: int(r.GetPosition())})
	}
	h.log.Debug("search done", "tool", req.GetTool(), "results", len(out.Results), "credential_version", resp.GetCredentialVersion())
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: formatResults(req.GetQuery(), out.Results)}}}, out, nil
}
