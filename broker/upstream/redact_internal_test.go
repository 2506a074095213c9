package upstream

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// trickyKeys are keys whose forms differ from one another in the ways that matter: bytes each
// escaper treats differently, '%' itself, spaces, non-ASCII, and keys whose base64 is or is not
// padded.
var trickyKeys = []string{
	benchKey,
	"a",
	"sk_test_1",  // base64 without padding
	"sk_test_12", // base64 ending in "=="
	"sk_live_a/b+c=d?e&f~ü",
	"a b+c",
	" ",
	"%",
	"%41%zz",
	"$&+,/:;=?@",
	"-_.~",
	"!\"#'()*<>[]^`{|}",
	`sk_"q\\x&<`, // what a quoting library (fmt's %q, encoding/json) escapes
	"\x00\x7f\x80\xff",
	"ключ",
	strings.Repeat("/", 100),
	"FFFF", // its hex forms are digits only: no upper/lower difference
}

// TestEscapersMatchURL: appendEscape is url.QueryEscape and url.PathEscape byte for byte, for
// every single byte and for the tricky keys, and escapedLen is the length it writes.
func TestEscapersMatchURL(t *testing.T) {
	keys := slices.Clone(trickyKeys)
	for c := range 256 {
		keys = append(keys, string([]byte{byte(c)}))
	}
	for _, k := range keys {
		for _, tt := range []struct {
			name  string
			query bool
			want  string
		}{
			{"QueryEscape", true, url.QueryEscape(k)},
			{"PathEscape", false, url.PathEscape(k)},
		} {
			got := appendEscape([]byte("prefix"), []byte(k), tt.query)
			if string(got) != "prefix"+tt.want {
				t.Errorf("appendEscape(%q) = %q, want url.%s's %q", k, got[len("prefix"):], tt.name, tt.want)
			}
			if n := escapedLen([]byte(k), tt.query); n != len(tt.want) {
				t.Errorf("escapedLen(%q, %s) = %d, want %d", k, tt.name, n, len(tt.want))
			}
		}
	}
}

var upperPercentHex = regexp.MustCompile(`%[0-9A-F]{2}`)

// stdlibForms builds key's forms the way keyForms did before they shared one buffer: a string
// per form from the standard library's encoders, longest first, no duplicates, none empty.
func stdlibForms(key []byte) []string {
	k := string(key)
	lower := func(s string) string { return upperPercentHex.ReplaceAllStringFunc(s, strings.ToLower) }
	fs := []string{
		k,
		base64.StdEncoding.EncodeToString(key),
		base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
		hex.EncodeToString(key),
		strings.ToUpper(hex.EncodeToString(key)),
		url.QueryEscape(k),
		url.PathEscape(k),
		lower(url.QueryEscape(k)),
		lower(url.PathEscape(k)),
		strings.TrimSuffix(strings.TrimPrefix(strconv.Quote(k), `"`), `"`),
		strings.TrimSuffix(strings.TrimPrefix(string(must(json.Marshal(k))), `"`), `"`),
	}
	slices.SortFunc(fs, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b))
	})
	fs = slices.Compact(fs)
	if len(fs) > 0 && fs[len(fs)-1] == "" {
		fs = fs[:len(fs)-1]
	}
	return fs
}

// checkForms fails t unless keyForms(key) holds exactly stdlibForms(key), in the same order, all
// of them views into one buffer that was sized exactly (an append that outgrew it would have
// left an unwiped copy behind).
func checkForms(t *testing.T, key []byte) {
	t.Helper()
	fs := keyForms(key)
	defer fs.wipe()
	var got []string
	for _, f := range fs.list() {
		got = append(got, string(f))
	}
	if want := stdlibForms(key); !slices.Equal(got, want) {
		t.Fatalf("keyForms(%q) = %q, want %q", key, got, want)
	}
	if len(fs.buf) != cap(fs.buf) {
		t.Errorf("keyForms(%q): buffer len %d, cap %d: sized wrongly", key, len(fs.buf), cap(fs.buf))
	}
	for _, f := range fs.list() {
		if !inside(f, fs.buf) {
			t.Errorf("keyForms(%q): form %q is not a view into the buffer", key, f)
		}
	}
}

// inside reports whether sub's memory lies within buf's.
func inside(sub, buf []byte) bool {
	for i := 0; len(sub) > 0 && i+len(sub) <= len(buf); i++ {
		if &buf[i] == &sub[0] {
			return true
		}
	}
	return false
}

func TestKeyForms(t *testing.T) {
	for _, k := range append(trickyKeys, "") {
		t.Run(fmt.Sprintf("%q", k), func(t *testing.T) { checkForms(t, []byte(k)) })
	}
}

// FuzzKeyForms: for any key, the one-buffer forms are the standard library's, in the same order.
func FuzzKeyForms(f *testing.F) {
	for _, k := range trickyKeys {
		f.Add([]byte(k))
	}
	f.Fuzz(func(t *testing.T, key []byte) {
		if len(key) > maxKeyLen {
			return
		}
		checkForms(t, key)
	})
}

// TestWipe: wipe zeroes every byte of the buffer and forgets the forms, so that a use after it
// finds nothing rather than searching for zeros.
func TestWipe(t *testing.T) {
	for _, k := range trickyKeys {
		fs := keyForms([]byte(k))
		buf := fs.buf[:cap(fs.buf)]
		if bytes.Count(buf, []byte{0}) == len(buf) {
			t.Fatalf("keyForms(%q): buffer is zero before wipe", k)
		}
		fs.wipe()
		if i := slices.IndexFunc(buf, func(b byte) bool { return b != 0 }); i >= 0 {
			t.Errorf("keyForms(%q): after wipe, buffer byte %d is %#x", k, i, buf[i])
		}
		if len(fs.list()) != 0 || fs.buf != nil {
			t.Errorf("keyForms(%q): wipe left %d forms", k, len(fs.list()))
		}
		if in := "x" + k; fs.redact(in) != in {
			t.Errorf("redact after wipe changed %q", in)
		}
	}
}

// TestFormsWipedAfterUse: every path that builds a key's forms (Redact, RedactJSON, a success
// answer, an error answer and the error.code check after it, a transport error) has zeroed their buffer by
// the time it returns, and what it returned does not share that buffer (it still reads right).
func TestFormsWipedAfterUse(t *testing.T) {
	var (
		mu   sync.Mutex
		bufs [][]byte
	)
	formsBuilt = func(buf []byte) {
		mu.Lock()
		bufs = append(bufs, buf[:cap(buf)])
		mu.Unlock()
	}
	t.Cleanup(func() { formsBuilt = nil })

	key := []byte("sk_live_a/b+c=d~Zq9")
	b64 := base64.StdEncoding.EncodeToString(key)
	echo := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Echo", "key="+b64)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	do := func(h http.HandlerFunc, decode func([]byte) (any, error)) string {
		srv := httptest.NewServer(h)
		defer srv.Close()
		c, err := New(Config{BaseURL: srv.URL, MaxRetries: -1})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(context.Background(), Request{Path: "/api/v1/search", Body: []byte(`{}`), Decode: decode}, key)
		if err != nil {
			return err.Error()
		}
		return string(resp.Body) + fmt.Sprint(resp.Header)
	}
	refuse := func([]byte) (any, error) { return nil, errors.New("refused") }
	tests := []struct {
		name string
		run  func() string // returns what the path produced, which must not hold the key
	}{
		{"Redact", func() string { return Redact("a "+string(key)+" b "+b64, key) }},
		{"RedactJSON", func() string {
			out, _ := RedactJSON([]byte(`{"k":"`+b64+`","n":1}`), key)
			return string(out)
		}},
		{"success", func() string { return do(echo(200, `{"results":[],"echo":"`+url.QueryEscape(string(key))+`"}`), nil) }},
		{"success Decode refuses", func() string { return do(echo(200, `{"echo":"`+b64+`"}`), refuse) }},
		{"success not JSON", func() string { return do(echo(200, "key="+string(key)), nil) }},
		{"401 JSON", func() string { return do(echo(401, `{"error":{"code":"unauthorized","message":"`+b64+`"}}`), nil) }},
		{"401 not JSON", func() string { return do(echo(401, "bad key "+string(key)), nil) }},
		{"transport error", func() string {
			srv := httptest.NewServer(http.NotFoundHandler())
			srv.Close() // nothing listens: the dial fails
			c, err := New(Config{BaseURL: srv.URL, MaxRetries: -1})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Do(context.Background(), Request{Path: "/api/v1/search", Body: []byte(`{}`)}, key)
			return err.Error()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			bufs = nil
			mu.Unlock()
			out := tt.run()
			mu.Lock()
			defer mu.Unlock()
			if len(bufs) == 0 {
				t.Fatal("no forms were built")
			}
			for i, buf := range bufs {
				if j := slices.IndexFunc(buf, func(b byte) bool { return b != 0 }); j >= 0 {
					t.Errorf("forms buffer %d of %d not wiped: byte %d is %#x", i+1, len(bufs), j, buf[j])
				}
			}
			// A result sharing a wiped buffer would read as NULs where the marker or text was.
			if strings.ContainsRune(out, 0) || strings.Contains(out, string(key)) || strings.Contains(out, b64) {
				t.Errorf("result %q holds the key or NULs", out)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
