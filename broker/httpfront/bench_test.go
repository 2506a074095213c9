package httpfront

import (
	"testing"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

// BenchmarkHTTPFrontSearch is one web_search through the HTTP front over the Unix socket, against
// the fake upstream (cache off: every call reaches it), for comparison with grpcapi's benchmarks.
func BenchmarkHTTPFrontSearch(b *testing.B) {
	h := newHarness(b)
	h.putKey(b)
	tok := h.mint(b, broker.MintRequest{Tools: []string{"web_search"}})
	for b.Loop() {
		if a := post(b, h.unix, "http://b", scaviotest.SearchPath, tok, `{"query":"bench","num_results":5}`); a.status != 200 {
			b.Fatalf("%d %s", a.status, a.body)
		}
	}
}
