package broker

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/credbroker/credbroker/broker/upstream"
)

func TestToolBodies(t *testing.T) {
	f := false
	cases := []struct {
		name    string
		req     SearchRequest
		want    string // JSON body, or "" when an error is expected
		wantErr string
	}{
		{"web default num", SearchRequest{Tool: "web_search", Query: "go"}, `{"query":"go","num_results":5}`, ""},
		{"web num", SearchRequest{Tool: "web_search", Query: "go", NumResults: 100}, `{"query":"go","num_results":100}`, ""},
		{"web num too big", SearchRequest{Tool: "web_search", Query: "go", NumResults: 101}, "", "num_results"},
		{"web negative num", SearchRequest{Tool: "web_search", Query: "go", NumResults: -1}, "", "num_results"},
		{"invalid utf8", SearchRequest{Tool: "web_search", Query: "\xff"}, "", "UTF-8"},
		{"500 runes ok", SearchRequest{Tool: "web_search", Query: strings.Repeat("ü", 500)}, `{"query":"` + strings.Repeat("ü", 500) + `","num_results":5}`, ""},
		{"google full", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{SearchType: "images", CountryCode: "US", Language: "EN", Page: 3, Device: "mobile", LightRequest: &f}},
			`{"country_code":"us","device":"mobile","language":"en","light_request":false,"page":3,"query":"go","search_type":"images"}`, ""},
		{"google bad type", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{SearchType: "videos"}}, "", "search_type"},
		{"google bad country", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{CountryCode: "usa"}}, "", "country_code"},
		{"google bad language", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{Language: "e1"}}, "", "language"},
		{"google news mobile", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{SearchType: "news", Device: "mobile"}}, "", "desktop"},
		{"google page", SearchRequest{Tool: "google_search", Query: "go", Google: GoogleOptions{Page: 101}}, "", "page"},
		{"google num_results", SearchRequest{Tool: "google_search", Query: "go", NumResults: 3}, "", "num_results"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tool, _ := LookupTool(tc.req.Tool)
			body, err := tool.body(&tc.req)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want InvalidArgument with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(body)
			if string(got) != tc.want {
				t.Fatalf("body %s, want %s", got, tc.want)
			}
		})
	}
}

func TestParseResults(t *testing.T) {
	res, meta, err := parseResults([]byte(`{"results":[{"title":"A","link":"https://a","description":"d","extra":{"x":1}},{"title":"B","url":"https://b","snippet":"s","position":7}],"credits_used":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].URL != "https://a" || res[0].Snippet != "d" || res[0].Position != 1 || res[1].Position != 7 {
		t.Fatalf("results: %+v", res)
	}
	if res[0].Raw["extra"] == nil || meta["credits_used"] != float64(1) || meta["results"] != nil {
		t.Fatalf("raw/meta lost fields: %+v %+v", res[0].Raw, meta)
	}
	for _, bad := range []string{`[]`, `{"results":{}}`, `{"results":[1]}`, `not json`} {
		if _, _, err := parseResults([]byte(bad)); !errors.Is(err, upstream.ErrBadResponse) {
			t.Errorf("%s: got %v, want ErrBadResponse", bad, err)
		}
	}
	if res, _, err := parseResults([]byte(`{}`)); err != nil || len(res) != 0 {
		t.Fatalf("no results key: %v %v", res, err)
	}
}

// FuzzSearchRequest checks that validation never lets through what the limits forbid and never
// panics, whatever the input.
func FuzzSearchRequest(f *testing.F) {
	f.Add("web_search", "mcp security", 5, "", "", "", 0, "")
	f.Add("google_search", "golang", 0, "news", "us", "en", 2, "desktop")
	f.Add("google_search", "\xff\xfe", 0, "lens", "xx", "zz", -1, "tv")
	f.Fuzz(func(t *testing.T, tool, query string, num int, st, cc, lang string, page int, device string) {
		tl, ok := LookupTool(tool)
		if !ok {
			return
		}
		req := SearchRequest{Tool: tool, Query: query, NumResults: num, Google: GoogleOptions{SearchType: st, CountryCode: cc, Language: lang, Page: page, Device: device}}
		body, err := tl.body(&req)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("non-InvalidArgument error %v", err)
			}
			return
		}
		if !utf8.ValidString(query) || utf8.RuneCountInString(query) > MaxQueryLen || strings.TrimSpace(query) == "" {
			t.Fatalf("accepted query %q", query)
		}
		if _, err := json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	})
}

// validCredentialName accepts exactly what the documented pattern ^[a-z0-9_.-]{1,64}$ does.
func TestValidCredentialName(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9_.-]{1,64}$`)
	for _, name := range []string{
		"", "a", "scavio_api_key", "a.b-c_9", strings.Repeat("a", 64), strings.Repeat("a", 65),
		"A", "a b", "a/b", "a\n", "\na", "é", "k\u212a", "a\x00", "..", "-", "sk_live_" + strings.Repeat("x", 57),
	} {
		if got, want := validCredentialName(name), re.MatchString(name); got != want {
			t.Errorf("validCredentialName(%q) = %v, the pattern says %v", name, got, want)
		}
	}
}

// A cached answer holds its body's bytes and no more: the upstream client reads the body with
// io.ReadAll, whose buffer has spare capacity that would otherwise live as long as the entry.
func TestCachedAnswerHoldsNoSpareCapacity(t *testing.T) {
	b, _ := newCacheBroker(t, 10)
	raw, _ := mintFor(t, b, MintRequest{})
	res, err := b.Search(context.Background(), raw, me, SearchRequest{Query: "capacity"})
	if err != nil {
		t.Fatal(err)
	}
	if res.ans == nil || len(res.ans.body) == 0 {
		t.Fatal("the answer was not cached")
	}
	if l, c := len(res.ans.body), cap(res.ans.body); c != l {
		t.Fatalf("cached body: %d bytes in a %d-byte buffer", l, c)
	}
}
