package upstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

const benchKey = "sk_test_Zq9Xw2Lk7Pm4Rt8Yv1"

// benchAnswer is a 10-result upstream answer (about 3 KiB) without the key, and the headers
// such an answer comes with.
func benchAnswer() ([]byte, http.Header) {
	var parts []string
	for i := range 10 {
		parts = append(parts, fmt.Sprintf(`{"title":"Result %d for golang generics","url":"https:\/\/example.com\/classic\/%d?q=golang+generics","snippet":"Fake classic result %d about golang generics.","position":%d}`, i, i, i, i))
	}
	body := []byte(`{"query":"golang generics","results":[` + strings.Join(parts, ",") + `],"credits_used":1}`)
	hdr := http.Header{
		"Content-Type":          {"application/json"},
		"Date":                  {"Thu, 03 Dec 2026 12:00:00 GMT"},
		"X-Ratelimit-Limit":     {"100"},
		"X-Ratelimit-Remaining": {"99"},
		"X-Ratelimit-Reset":     {"1796313600"},
		"X-Request-Id":          {"req_8f14e45fceea167a5a36dedd4bea2543"},
	}
	return body, hdr
}

// BenchmarkReadSuccess is what every 2xx answer costs once its body has arrived: read, check,
// build the key's forms, redact body and headers.
func BenchmarkReadSuccess(b *testing.B) {
	c, err := New(Config{BaseURL: "http://127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	body, hdr := benchAnswer()
	key := []byte(benchKey)
	ctx := context.Background()
	for b.Loop() {
		resp := &http.Response{StatusCode: 200, Header: hdr, ContentLength: int64(len(body)),
			Body: io.NopCloser(bytes.NewReader(body))}
		if o := c.readSuccess(ctx, ctx, resp, key, nil); o.resp == nil || o.resp.KeyReflected != 0 {
			b.Fatalf("readSuccess: %+v", o)
		}
	}
}

// BenchmarkErrorOutcome is what a non-2xx answer costs: its error.code, and whether body or
// headers echoed the key.
func BenchmarkErrorOutcome(b *testing.B) {
	_, hdr := benchAnswer()
	body := []byte(`{"error":{"code":"rate_limited","message":"slow down"}}`)
	key := []byte(benchKey)
	for b.Loop() {
		resp := &http.Response{StatusCode: 429, Header: hdr, ContentLength: int64(len(body)),
			Body: io.NopCloser(bytes.NewReader(body))}
		if o := errorOutcome(ErrRateLimited, 429, resp, key); o.code != "rate_limited" || o.reflected {
			b.Fatalf("errorOutcome: %+v", o)
		}
	}
}

// BenchmarkRedact is an error text without the key (Do redacts every transport error's text).
func BenchmarkRedact(b *testing.B) {
	key := []byte(benchKey)
	s := `Post "http://127.0.0.1:` + strconv.Itoa(8080) + `/api/v1/search": dial tcp 127.0.0.1:8080: connect: connection refused`
	for b.Loop() {
		if Redact(s, key) != s {
			b.Fatal("redacted a text without the key")
		}
	}
}
