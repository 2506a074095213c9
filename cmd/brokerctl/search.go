package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// errNoToken is returned when CREDBROKER_TOKEN is unset. The token is never read from a flag: flags
// land in shell history and in ps.
var errNoToken = errors.New("set CREDBROKER_TOKEN to a token from `brokerctl token mint`")

// googleFlagNames are the flags that fill GoogleSearchOptions (contract B).
var googleFlagNames = []string{"search-type", "country", "language", "page", "device"}

type searchFlags struct {
	tool    string
	num     int32
	asJSON  bool
	noCache bool

	// google_search (contract B) options.
	searchType, country, language, device string
	page                                  int32
}

// searchRequest builds the request from the flags and the query words. changed reports whether a
// flag was given on the command line.
func (f *searchFlags) searchRequest(args []string, changed func(string) bool) (*credbrokerv1.SearchRequest, error) {
	query := strings.TrimSpace(strings.Join(args, " "))
	if query == "" {
		return nil, errors.New("the query is empty")
	}
	if f.num < 0 {
		return nil, fmt.Errorf("--num must be 0 (the default) or more, got %d", f.num)
	}
	if f.page < 0 {
		return nil, fmt.Errorf("--page must be 0 (the default) or more, got %d", f.page)
	}
	req := &credbrokerv1.SearchRequest{Tool: f.tool, Query: query, NumResults: f.num, NoCache: f.noCache}
	var googleSet []string
	for _, name := range googleFlagNames {
		if changed(name) {
			googleSet = append(googleSet, "--"+name)
		}
	}
	// The two known tools take disjoint options; mixing them is a mistake worth a clear message
	// rather than silently ignored flags. Unknown tools get whatever was given.
	switch f.tool {
	case "web_search":
		if len(googleSet) > 0 {
			return nil, fmt.Errorf("%s apply to --tool google_search only", strings.Join(googleSet, ", "))
		}
	case "google_search":
		if changed("num") {
			return nil, errors.New("--num applies to --tool web_search only")
		}
	}
	if len(googleSet) > 0 {
		req.Google = &credbrokerv1.GoogleSearchOptions{
			SearchType:  f.searchType,
			CountryCode: f.country,
			Language:    f.language,
			Page:        f.page,
			Device:      f.device,
		}
	}
	return req, nil
}

// searchResultJSON is one result of `search --json`.
type searchResultJSON struct {
	Title    string         `json:"title"`
	URL      string         `json:"url"`
	Snippet  string         `json:"snippet"`
	Position int32          `json:"position"`
	Raw      map[string]any `json:"raw"`
}

// searchJSON is the output of `search --json`.
type searchJSON struct {
	Tool              string             `json:"tool"`
	Results           []searchResultJSON `json:"results"`
	Credential        string             `json:"credential,omitempty"`
	CredentialVersion uint64             `json:"credential_version"`
	Metadata          map[string]any     `json:"metadata,omitempty"`
	Cached            bool               `json:"cached"`
	CacheAgeSeconds   float64            `json:"cache_age_seconds,omitempty"`
	Credits           uint64             `json:"credits"`
	// RateLimitWaitSeconds is how long brokerd held the call for a slot of the credential's limiter.
	RateLimitWaitSeconds float64 `json:"rate_limit_wait_seconds,omitempty"`
}

func newSearchCmd(a *app) *cobra.Command {
	var f searchFlags
	cmd := &cobra.Command{
		Use:   "search [flags] QUERY...",
		Short: "Run a search through brokerd with the token in CREDBROKER_TOKEN",
		Long: `Run one search through brokerd, as an MCP server would, with the token in the environment
variable CREDBROKER_TOKEN (never a flag). The query words are joined with spaces.`,
		Example: `  CREDBROKER_TOKEN=$(brokerctl token mint --tools web_search --ttl 5m) brokerctl search golang generics
  brokerctl search --tool google_search --search-type news --country us credbroker`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token := strings.TrimSpace(a.getenv("CREDBROKER_TOKEN"))
			if token == "" {
				return errNoToken
			}
			req, err := f.searchRequest(args, cmd.Flags().Changed)
			if err != nil {
				return err
			}
			var resp *credbrokerv1.SearchResponse
			err = a.call(cmd, token, func(ctx context.Context, c brokerAPI) error {
				var err error
				resp, err = c.Search(ctx, req)
				return err
			})
			if err != nil {
				return err
			}
			tool := resp.GetTool()
			if tool == "" {
				tool = req.GetTool()
			}
			// A limiter wait looks like a slow upstream unless it is named; under a second is noise.
			if w := resp.GetRateLimitWait().AsDuration(); w > time.Second {
				fmt.Fprintf(a.stderr, "brokerctl: waited %s for a rate-limit slot on %s (see `brokerctl credential list`)\n",
					w.Round(100*time.Millisecond), orDash(printable(resp.GetCredential())))
			}
			if f.asJSON {
				out := searchJSON{
					Tool:              tool,
					Results:           make([]searchResultJSON, 0, len(resp.GetResults())),
					Credential:        resp.GetCredential(),
					CredentialVersion: resp.GetCredentialVersion(),
					Cached:            resp.GetCached(),
					CacheAgeSeconds:   resp.GetCacheAge().AsDuration().Seconds(),
					Credits:           resp.GetCredits(),

					RateLimitWaitSeconds: resp.GetRateLimitWait().AsDuration().Seconds(),
				}
				if resp.GetMetadata() != nil {
					out.Metadata = resp.GetMetadata().AsMap()
				}
				for _, r := range resp.GetResults() {
					out.Results = append(out.Results, searchResultJSON{
						Title:    r.GetTitle(),
						URL:      r.GetUrl(),
						Snippet:  r.GetSnippet(),
						Position: r.GetPosition(),
						Raw:      r.GetRaw().AsMap(), // never nil: {} when the upstream sent nothing
					})
				}
				return writeJSON(a.stdout, out)
			}
			return writeResults(a, resp)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tool, "tool", "web_search", "tool to run: web_search or google_search")
	fl.Int32Var(&f.num, "num", 0, "number of results, 1-100 (web_search; 0: the broker's default)")
	fl.BoolVar(&f.asJSON, "json", false, "print the response as a JSON object")
	fl.BoolVar(&f.noCache, "no-cache", false, "ask the upstream even if the broker has the answer cached")
	fl.StringVar(&f.searchType, "search-type", "", "google_search: classic, news, maps, images or lens")
	fl.StringVar(&f.country, "country", "", "google_search: ISO 3166-1 alpha-2 country code, e.g. us")
	fl.StringVar(&f.language, "language", "", "google_search: ISO 639-1 language code, e.g. en")
	fl.Int32Var(&f.page, "page", 0, "google_search: 1-based result page (0: the upstream default)")
	fl.StringVar(&f.device, "device", "", "google_search: desktop or mobile")
	return cmd
}

// writeResults prints numbered results and a final "Results: N" line. Upstream text is made
// printable: a result must not be able to send escape sequences to the operator's terminal.
func writeResults(a *app, resp *credbrokerv1.SearchResponse) error {
	var b strings.Builder
	for i, r := range resp.GetResults() {
		title := printable(r.GetTitle())
		if title == "" {
			title = "(no title)"
		}
		fmt.Fprintf(&b, "%d. %s\n", i+1, title)
		if u := printable(r.GetUrl()); u != "" {
			fmt.Fprintf(&b, "   %s\n", u)
		}
		if s := printable(r.GetSnippet()); s != "" {
			fmt.Fprintf(&b, "   %s\n", s)
		}
		b.WriteString("\n")
	}
	if resp.GetCached() {
		fmt.Fprintf(&b, "(from the broker's cache, %s old; --no-cache for fresh results)\n", resp.GetCacheAge().AsDuration().Round(time.Second))
	}
	fmt.Fprintf(&b, "Results: %d\n", len(resp.GetResults()))
	_, err := fmt.Fprint(a.stdout, b.String())
	return err
}
