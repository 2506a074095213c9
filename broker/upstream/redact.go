package upstream

import (
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
)

const redacted = "[REDACTED]"

// Redact replaces every occurrence of key in s, in the encodings an upstream, proxy or library is
// likely to echo it in, with "[REDACTED]": the raw bytes, standard and URL-safe base64 (padded and
// raw), lower- and upper-case hex, and URL query and path escaping. An empty key returns s unchanged.
//
// It cannot find the key inside a longer base64 stream that does not start on the key's first byte;
// that is why errors never carry body bytes in the first place and Redact is only a second line of
// defence.
func Redact(s string, key []byte) string {
	if len(key) == 0 || s == "" {
		return s
	}
	forms := []string{
		string(key),
		base64.StdEncoding.EncodeToString(key),
		base64.RawStdEncoding.EncodeToString(key),
		base64.URLEncoding.EncodeToString(key),
		base64.RawURLEncoding.EncodeToString(key),
		hex.EncodeToString(key),
		strings.ToUpper(hex.EncodeToString(key)),
		url.QueryEscape(string(key)),
		url.PathEscape(string(key)),
		// Escapers emit upper-case %XX; other encoders use lower case.
		lowerPercentHex(url.QueryEscape(string(key))),
		lowerPercentHex(url.PathEscape(string(key))),
	}
	// Longest first, so that replacing a short form cannot break up a longer one that contains it
	// (the padded base64 contains the raw base64, for instance) and leave part of it behind.
	slices.SortFunc(forms, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b))
	})
	forms = slices.Compact(forms)
	for _, f := range forms {
		if f != "" {
			s = strings.ReplaceAll(s, f, redacted)
		}
	}
	return s
}

// lowerPercentHex lower-cases the two hex digits after each '%'.
func lowerPercentHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			for j := i + 1; j <= i+2; j++ {
				if 'A' <= b[j] && b[j] <= 'F' {
					b[j] += 'a' - 'A'
				}
			}
			i += 2
		}
	}
	return string(b)
}
