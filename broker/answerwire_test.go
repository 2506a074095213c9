package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/credbroker/credbroker/broker/answerwire"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// oldWire is the gRPC edge's encoding of an answer before the transcoder, kept as the oracle:
// the results and metadata encoding/json decoded (decodeResults), converted to structpb values
// as grpcapi's answerMessage does, marshalled in proto's deterministic order. It returns the
// results' records and the metadata's record apart.
func oldWire(t testing.TB, results []Result, meta map[string]any, want int) (res, md []byte) {
	t.Helper()
	if want > 0 && len(results) > want {
		results = results[:want]
	}
	out := &pb.SearchResponse{}
	for _, r := range results {
		raw, err := structpb.NewStruct(r.Raw)
		if err != nil {
			t.Fatalf("structpb: %v", err)
		}
		out.Results = append(out.Results, &pb.SearchResult{Title: r.Title, Url: r.URL, Snippet: r.Snippet, Position: int32(r.Position), Raw: raw})
	}
	det := proto.MarshalOptions{Deterministic: true}
	res, err := det.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(meta) > 0 {
		s, err := structpb.NewStruct(meta)
		if err != nil {
			t.Fatalf("structpb: %v", err)
		}
		if md, err = det.Marshal(&pb.SearchResponse{Metadata: s}); err != nil {
			t.Fatal(err)
		}
	}
	return res, md
}

// oldJSON is the HTTP front's encoding of an answer from the decoded maps (mapJSON), the oracle:
// encoding/json's Marshal of the decoded metadata and the first want results' objects.
func oldJSON(t testing.TB, results []Result, meta map[string]any, want int) []byte {
	t.Helper()
	b, err := mapJSON(results, meta, want)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkTranscode holds decodeAnswer (the transcoder) to decodeAnswerMaps (encoding/json, the old
// decode) for body: the same refusal, word for word and of the same kind (a *json.SyntaxError is
// what the upstream client reports as "not valid JSON"), or the same wire bytes for every number
// of results an edge may keep, and the same credits read from the metadata.
func checkTranscode(t testing.TB, body []byte) {
	t.Helper()
	oldV, oldErr := decodeAnswerMaps(body)
	newV, newErr := decodeAnswer(body)
	if (oldErr == nil) != (newErr == nil) {
		t.Fatalf("body %q: old error %v, new error %v", body, oldErr, newErr)
	}
	if oldErr != nil {
		var os, ns *json.SyntaxError
		if oldErr.Error() != newErr.Error() || errors.As(oldErr, &os) != errors.As(newErr, &ns) {
			t.Fatalf("body %q: old error %q, new error %q", body, oldErr, newErr)
		}
		if _, err := answerwire.Transcode(body); err == nil {
			t.Fatalf("body %q: the transcoder accepts what encoding/json refuses (%v)", body, oldErr)
		}
		// A cached body the transcoder refuses fails Wire as it fails Decoded.
		hit := (&cachedAnswer{body: body}).hit()
		_, _, derr := hit.Decoded()
		w, werr := (&cachedAnswer{body: body}).hit().Wire()
		if w != nil || derr == nil || werr == nil || derr.Error() != werr.Error() {
			t.Fatalf("body %q: Decoded error %v, Wire %v, %v", body, derr, w, werr)
		}
		return
	}
	old, nw := oldV.(decodedAnswer), newV.(decodedAnswer)
	if nw.wire == nil {
		t.Fatalf("body %q: the transcoder refused what encoding/json accepts", body)
	}
	a := nw.wire
	if a.Len() != len(old.results) {
		t.Fatalf("body %q: %d results, want %d", body, a.Len(), len(old.results))
	}
	// All (0, as for len or more), the first, the first two: every way of trimming there is.
	for _, want := range []int{0, 1, 2} {
		res, md := oldWire(t, old.results, old.meta, want)
		if got := a.Results(want); !bytes.Equal(got, res) {
			t.Fatalf("body %q, %d results: results\n got %x\nwant %x", body, want, got, res)
		}
		if got := a.Metadata(); !bytes.Equal(got, md) {
			t.Fatalf("body %q: metadata\n got %x\nwant %x", body, got, md)
		}
		js := oldJSON(t, old.results, old.meta, want)
		if got := a.AppendJSON(nil, want); !bytes.Equal(got, js) {
			t.Fatalf("body %q, %d results: JSON\n got %s\nwant %s", body, want, got, js)
		}
	}
	oldRes := &SearchResult{results: old.results, metadata: old.meta, decoded: true}
	newRes := &SearchResult{wire: a}
	on, ook := oldRes.reportedCredits()
	nn, nok := newRes.reportedCredits()
	if on != nn || ook != nok {
		t.Fatalf("body %q: reported credits %d %v, want %d %v", body, nn, nok, on, ook)
	}
	// A hit transcodes the cached body to the same bytes.
	w, err := (&cachedAnswer{body: body}).hit().Wire()
	if err != nil || w == nil || !bytes.Equal(w.Results(0), a.Results(0)) || !bytes.Equal(w.Metadata(), a.Metadata()) {
		t.Fatalf("body %q: a hit's Wire differs (%v)", body, err)
	}
}

var transcodeCases = []struct{ name, body string }{
	{"scavio answer", `{"query":"go","results":[{"title":"A","url":"https://a","snippet":"s","position":1,"extra":{"x":[1,2.5,-0,null,true,false,"z"]}},{"title":"B","link":"https://b","description":"d","position":7}],"credits_used":1,"response_time":0.42}`},
	{"empty object", `{}`},
	{"null", ` null `},
	{"results null", `{"results":null,"a":1}`},
	{"results empty", `{"results":[]}`},
	{"results missing", `{"credits":2}`},
	{"results a string", `{"results":"x"}`},
	{"results an object", `{"results":{}}`},
	{"results a number", `{"results":1}`},
	{"item not an object", `{"results":[{},1]}`},
	{"item null", `{"results":[null]}`},
	{"item array", `{"results":[[]]}`},
	{"bad item, then JSON error", `{"results":[1],`},
	{"duplicate results, last wins", `{"results":[1],"results":[{"title":"t"}]}`},
	{"duplicate results, last bad", `{"results":[{"title":"t"}],"results":5}`},
	{"duplicate results, last null", `{"results":[{"title":"t"}],"results":null}`},
	{"duplicate keys", `{"b":1,"a":2,"b":{"x":1},"a":"last","c":[]}`},
	{"duplicate typed field", `{"results":[{"title":"one","title":2,"url":"","link":"l","snippet":5,"description":"d","content":"c"}]}`},
	{"escaped results key", `{"r\u0065sults":[{"t\u0069tle":"x"}]}`},
	{"surrogates", `{"a":"\ud83d\ude00 \ud83d \ude00 \ud83d\u0041 \udc00\ud800 \uD83D\uDE00\u00e9\u0000"}`},
	{"escapes", `{"a":"\"\\\/\b\f\n\r\t","\n":"key"}`},
	{"invalid escape", `{"a":"\'"}`},
	{"invalid UTF-8", "{\"a\":\"\xff\xfe\xed\xa0\x80 ok \xe2\x82\",\"\xc0\":1}"},
	{"control character", "{\"a\":\"\x01\"}"},
	{"numbers", `{"a":[0,-0,1e308,-1e308,4.9e-324,1e-400,123456789012345678901234567890,0.1,1E2,1e+2,1e-2,999999999999999,9007199254740993]}`},
	{"number too big", `{"a":1e309}`},
	{"number too big in results", `{"results":[{"position":-1e400}]}`},
	{"bad numbers", `{"a":01}`},
	{"bad fraction", `{"a":1.}`},
	{"bad exponent", `{"a":1e}`},
	{"minus alone", `{"a":-}`},
	{"positions", `{"results":[{"position":0},{"position":1e6},{"position":1000001},{"position":2.9},{"position":"3"},{"position":-1},{"position":null}]}`},
	{"long strings", `{"results":[{"title":"` + strings.Repeat("t", 300) + `","raw":{"` + strings.Repeat("k", 200) + `":"` + strings.Repeat("v", 20000) + `"}}],"m":"` + strings.Repeat("é", 100) + `"}`},
	{"whitespace", " \t\r\n{ \"a\" : [ 1 , { } , [ ] ] , \"results\" : [ { } ] } \n"},
	{"top-level array", `[1,2]`},
	{"top-level array, then junk", `[1,2] x`},
	{"top-level string", `"x"`},
	{"top-level number", `5`},
	{"top-level true", `true`},
	{"empty", ``},
	{"spaces", `   `},
	{"trailing junk", `{} {}`},
	{"trailing comma", `{"a":1,}`},
	{"array trailing comma", `{"a":[1,]}`},
	{"unclosed", `{"results":[`},
	{"unclosed string", `{"a":"`},
	{"bad literal", `{"a":tru}`},
	{"literal then junk", `{"a":truex}`},
	{"nul literal", `nul`},
	{"key not a string", `{a:1}`},
	{"missing colon", `{"a" 1}`},
	{"deep nesting ok", `{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`},
	{"too deep", `{"a":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`},
	{"deep top-level array", strings.Repeat("[", 10001) + strings.Repeat("]", 10001)},
	{"JSON escapes", `{"<&>":"<a href=\"x\">&amp;</a>","s":"\u2028\u2029\u0001\u001f\u007f\b\f\n\r\t\\","z":1,"results":[{"b":1},{"a":[]}],"a":{},"résumé":"ü"}`},
	{"JSON numbers", `{"n":[1e21,1e20,999999999999999999999,1e-6,1e-7,0.000001,-0,-1e-7,1.5e300,123456789.125,5e-324,1e-9,2e-10]}`},
	{"results sorts last", `{"a":1,"r":2,"resultsz":3,"result":4,"results":[{}],"s":5}`},
	{"many fields unsorted", `{"results":[{` + manyFields(300) + `}],` + manyFields(200) + `}`},
}

// manyFields is n fields in an order that is not sorted, with duplicates.
func manyFields(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":"%s"`, (i*7919)%(n/2+1), strings.Repeat("x", i%150))
	}
	return b.String()
}

// TestTranscodeAnswer holds the transcoder to the old decode, case by case (FuzzTranscodeAnswer
// does it for arbitrary bodies).
func TestTranscodeAnswer(t *testing.T) {
	for _, tc := range transcodeCases {
		t.Run(tc.name, func(t *testing.T) { checkTranscode(t, []byte(tc.body)) })
	}
}

// FuzzTranscodeAnswer checks that for any body the transcoder refuses exactly what encoding/json
// refuses, with the same error, and otherwise writes the bytes the maps and structpb gave.
func FuzzTranscodeAnswer(f *testing.F) {
	for _, tc := range transcodeCases {
		if len(tc.body) < 4096 {
			f.Add([]byte(tc.body))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkTranscode(t, body) })
}

// BenchmarkDecodeAnswer is the cache-miss decode of the fake Scavio's answer for five results,
// into what the gRPC edge sends: "maps" the old way (encoding/json into map[string]any, structpb
// values, proto's marshal as gRPC's codec does it), "transcode" answerwire's one pass plus the copy
// into the message (grpcapi's missMessage).
func BenchmarkDecodeAnswer(b *testing.B) {
	fake := scaviotest.NewUnstartedHandler("k")
	req := httptest.NewRequest(http.MethodPost, scaviotest.SearchPath, strings.NewReader(`{"query":"credbroker benchmark query","num_results":5}`))
	req.Header.Set("x-api-key", "k")
	rec := httptest.NewRecorder()
	fake.Handler().ServeHTTP(rec, req)
	body := rec.Body.Bytes()
	b.Run("maps", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			v, err := decodeAnswerMaps(body)
			if err != nil {
				b.Fatal(err)
			}
			d := v.(decodedAnswer)
			out := &pb.SearchResponse{}
			for _, r := range d.results {
				raw, err := structpb.NewStruct(r.Raw)
				if err != nil {
					b.Fatal(err)
				}
				out.Results = append(out.Results, &pb.SearchResult{Title: r.Title, Url: r.URL, Snippet: r.Snippet, Position: int32(r.Position), Raw: raw})
			}
			if out.Metadata, err = structpb.NewStruct(d.meta); err != nil {
				b.Fatal(err)
			}
			if _, err := proto.Marshal(out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("transcode", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			v, err := decodeAnswer(body)
			if err != nil {
				b.Fatal(err)
			}
			a := v.(decodedAnswer).wire
			r, m := a.Results(0), a.Metadata()
			_ = append(append(make([]byte, 0, len(r)+len(m)+64), r...), m...)
		}
	})
}
