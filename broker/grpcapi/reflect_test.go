package grpcapi

import (
	"context"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestKeyReflectedInSuccessCanary: an upstream that echoes the key in a 2xx answer (a result's
// snippet and URL, nested metadata, a header) must not get it to the client, the result cache,
// the logs or the audit; the reflection is counted and audited as key-reflected.
func TestKeyReflectedInSuccessCanary(t *testing.T) {
	h := newCacheHarness(t)
	h.putKey(t)
	tok := h.mint(t, &pb.MintTokenRequest{Tools: []string{"web_search"}})
	h.fake.SetFault(scaviotest.Fault{EchoKeyInResults: true})
	before := keyReflections(t)

	forms := []string{testKey, base64.StdEncoding.EncodeToString([]byte(testKey)), url.QueryEscape(testKey)}
	noKey := func(where, s string) {
		t.Helper()
		for _, f := range forms {
			if strings.Contains(s, f) {
				t.Errorf("%s holds the key (form %q): %s", where, f, s)
			}
		}
	}
	// The first call goes upstream; the second is answered from the cache.
	for i, wantCached := range []bool{false, true} {
		resp, err := h.search.Search(withToken(tok.Token), &pb.SearchRequest{Query: "canary"})
		if err != nil {
			t.Fatalf("search %d: %v", i, err)
		}
		if resp.Cached != wantCached {
			t.Fatalf("search %d: cached = %v, want %v", i, resp.Cached, wantCached)
		}
		out := protojson.Format(resp)
		noKey("search response", out)
		if !strings.Contains(resp.Results[0].Snippet, "[REDACTED]") {
			t.Errorf("search %d: snippet %q, want the key replaced by [REDACTED]", i, resp.Results[0].Snippet)
		}
	}
	if got := keyReflections(t) - before; got != 1 {
		t.Errorf("credbroker_upstream_key_reflections_total grew by %v, want 1", got)
	}
	noKey("logs", h.logs.String())
	recs, err := h.admin.ListAudit(context.Background(), &pb.ListAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var events, calls int
	for _, r := range recs.Records {
		noKey("audit record", protojson.Format(r))
		if r.Event == "key-reflected" {
			switch r.Method {
			case "event":
				events++
				if r.Credential != "scavio_api_key" || r.CredentialVersion != 1 || r.Code != "ERROR" {
					t.Errorf("key-reflected event record: %v", r)
				}
			case pb.SearchService_Search_FullMethodName:
				calls++
			}
		}
	}
	if events != 1 || calls != 1 {
		t.Errorf("audit: %d key-reflected events and %d Search records marked key-reflected, want 1 and 1", events, calls)
	}
}

func keyReflections(t *testing.T) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.KeyReflections.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
