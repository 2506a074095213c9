package main

import (
	"fmt"
	"strings"
)

// formatResults renders results as the compact numbered list an LLM reads in the text content:
// per result, "N. title" with N its rank, then the URL and the snippet on lines of their own,
// indented under the title. No blank lines: every token of context counts.
func formatResults(query string, results []result) string {
	if len(results) == 0 {
		return fmt.Sprintf("No results for %q.", query)
	}
	var b strings.Builder
	for i, r := range results {
		n := r.Position
		if n < 1 {
			n = i + 1
		}
		title := oneLine(r.Title)
		if title == "" {
			title = "(untitled)"
		}
		fmt.Fprintf(&b, "%d. %s\n", n, title)
		if r.URL != "" {
			fmt.Fprintf(&b, "   %s\n", oneLine(r.URL))
		}
		if s := oneLine(r.Snippet); s != "" {
			fmt.Fprintf(&b, "   %s\n", s)
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// oneLine collapses runs of whitespace, newlines included, so each field stays on its line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
