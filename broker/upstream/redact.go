package upstream

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
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
	return keyForms(key).redact(s)
}

// forms is every encoding of one key that Redact looks for, longest first.
type forms []string

func keyForms(key []byte) forms {
	fs := []string{
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
	slices.SortFunc(fs, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b))
	})
	fs = slices.Compact(fs)
	if len(fs) > 0 && fs[len(fs)-1] == "" {
		fs = fs[:len(fs)-1]
	}
	return fs
}

func (fs forms) redact(s string) string {
	for _, f := range fs {
		if strings.Contains(s, f) {
			s = strings.ReplaceAll(s, f, redacted)
		}
	}
	return s
}

// RedactJSON returns body, a valid JSON document, with every string (object names included) that
// holds key in a form Redact knows replaced as Redact would, and the number of strings and bare
// values it changed. Strings are compared after decoding their JSON escapes, so the key written
// as "sk\/live" or "\u0073k_live" is found too; a changed string is re-encoded, so the result
// stays valid JSON. A bare value (a number) holding the key becomes the string "[REDACTED]".
// A body without the key is returned unchanged (the same slice), and costs no allocation per
// string: this runs on every successful upstream answer.
func RedactJSON(body, key []byte) ([]byte, int) {
	if len(key) == 0 || len(body) == 0 {
		return body, 0
	}
	return keyForms(key).redactJSON(body)
}

// redactJSON is RedactJSON with the key's forms already built.
func (fs forms) redactJSON(body []byte) ([]byte, int) {
	if len(fs) == 0 || len(body) == 0 {
		return body, 0
	}
	fb := make([][]byte, len(fs))
	for i, f := range fs {
		fb[i] = []byte(f)
	}
	shortest := len(fs[len(fs)-1])
	holds := func(b []byte) bool {
		if len(b) < shortest {
			return false
		}
		for _, f := range fb {
			if bytes.Contains(b, f) {
				return true
			}
		}
		return false
	}
	// Only a string with escapes can hold the key without one of its forms appearing in the raw
	// bytes: when none does, the other strings and the bare values need no look, and a body
	// without a backslash none at all. One search of the whole body per form (vectorised) is far
	// cheaper than searching every string for every form.
	raw := holds(body)
	if !raw && bytes.IndexByte(body, '\\') < 0 {
		return body, 0
	}
	var (
		out     []byte // nil until the first change
		done    int    // body[:done] is already in out
		n       int
		scratch []byte // decoded escaped strings
	)
	replace := func(from, to int, with []byte) {
		out = append(append(out, body[done:from]...), with...)
		done = to
		n++
	}
	for i := 0; i < len(body); {
		switch c := body[i]; {
		case c == '"':
			// Find the closing quote: the next '"' not preceded by an escaping '\\'.
			j := i + 1
			escaped, closed := false, false
			for {
				if j >= len(body) { // only a body that is not valid JSON ends inside a string
					j = len(body)
					break
				}
				q := bytes.IndexByte(body[j:], '"')
				if q < 0 {
					j = len(body)
					break
				}
				if bs := bytes.IndexByte(body[j:j+q], '\\'); bs >= 0 {
					escaped = true
					j += bs + 2 // skip the escape and the byte it escapes
					continue
				}
				j += q
				closed = true
				break
			}
			j = min(j+1, len(body)) // past the closing quote
			lit := body[i:j]
			// The body is scanned before anyone checked it is JSON (the upstream's answer is
			// decoded after redaction): a literal the body ends inside has no closing quote, and
			// its content runs to the end.
			inner := lit[1:]
			if closed {
				inner = lit[1 : len(lit)-1]
			} else {
				lit = append(append([]byte(nil), lit...), '"') // decoded as if it were closed
			}
			if escaped {
				var ok bool
				scratch, ok = unescapeJSON(scratch[:0], lit)
				if !ok || holds(scratch) {
					// Decode the slow, certain way, and re-encode if the key was there.
					var s string
					if json.Unmarshal(lit, &s) == nil {
						if r := fs.redact(s); r != s {
							enc, _ := json.Marshal(r)
							replace(i, j, enc)
						}
					} else if !closed && (holds(inner) || ok) {
						// Not even decodable as closed (it ends in a lone '\'): the body is
						// no JSON and will be refused, but the tail must still not carry the key.
						replace(i, j, []byte(`"`+redacted+`"`))
					}
				}
			} else if raw && holds(inner) {
				// No escapes: the forms and the marker hold no '"' or '\\' here, so replacing
				// inside the literal keeps it a literal.
				replace(i, j, []byte(`"`+fs.redact(string(inner))+`"`))
			}
			i = j
		case bareByte(c):
			j := i
			for j < len(body) && bareByte(body[j]) {
				j++
			}
			if raw && holds(body[i:j]) {
				replace(i, j, []byte(`"`+redacted+`"`))
			}
			i = j
		default:
			i++
		}
	}
	if out == nil {
		return body, 0
	}
	return append(out, body[done:]...), n
}

// unescapeJSON appends the decoded content of the JSON string literal lit (quotes included) to
// dst. It reports false for anything it does not handle simply (a \u escape of a surrogate, a
// malformed escape); the caller then decodes with encoding/json.
func unescapeJSON(dst, lit []byte) ([]byte, bool) {
	if len(lit) < 2 {
		return dst, false
	}
	in := lit[1 : len(lit)-1]
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		if i+1 >= len(in) {
			return dst, false
		}
		i++
		switch in[i] {
		case '"', '\\', '/':
			dst = append(dst, in[i])
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			if i+4 >= len(in) {
				return dst, false
			}
			r, err := strconv.ParseUint(string(in[i+1:i+5]), 16, 32)
			if err != nil || utf16.IsSurrogate(rune(r)) {
				return dst, false
			}
			dst = utf8.AppendRune(dst, rune(r))
			i += 4
		default:
			return dst, false
		}
	}
	return dst, true
}

// bareByte reports whether c can be part of a JSON number or literal (true, false, null).
func bareByte(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '+' || c == '.'
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
