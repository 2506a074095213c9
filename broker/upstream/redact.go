package upstream

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

const redacted = "[REDACTED]"

// Redact replaces every occurrence of key in s, in the encodings an upstream, proxy or library is
// likely to echo it in, with "[REDACTED]": the raw bytes, standard and URL-safe base64 (padded and
// raw), lower- and upper-case hex, URL query and path escaping, and the key as Go's %q
// (strconv.Quote) and encoding/json write it between their quotes. The last two matter for a key
// holding '"' or '\\' (valid in a header, so a stored key may): a library that quotes what the
// upstream sent (net/http's `malformed HTTP status code "…"`) writes the key escaped, and the
// raw form no longer matches. An empty key returns s unchanged.
//
// It cannot find the key inside a longer base64 stream that does not start on the key's first byte;
// that is why errors never carry body bytes in the first place and Redact is only a second line of
// defence.
func Redact(s string, key []byte) string {
	if len(key) == 0 || s == "" {
		return s
	}
	fs := keyForms(key)
	defer fs.wipe()
	return fs.redact(s)
}

// numForms is how many encodings keyForms makes: raw, four base64, two hex, query and path
// escaping, those two again with lower-case %xx, Go-quoted and JSON-escaped.
const numForms = 13

// forms is every encoding of one key that Redact looks for. They are copies of the key in all
// but name, so they sit back to back in one buffer that wipe clears when the call is done: the
// broker clears the decrypted key after each call, and a dozen strings holding it would stay in
// the heap until the GC reused their memory. One buffer is also one allocation per call.
type forms struct {
	buf []byte           // every form, back to back
	all [numForms][]byte // all[:n] are views into buf: longest first, no duplicates, none empty
	n   int
}

// formsBuilt, set only by tests, sees every buffer keyForms fills, so that they can check it was
// wiped.
var formsBuilt func(buf []byte)

// keyForms builds key's forms. Every place that builds them wipes them when done.
func keyForms(key []byte) forms {
	var fs forms
	if len(key) == 0 {
		return fs
	}
	// Sized exactly, so that no append reallocates and leaves an unwiped copy behind (the tests
	// check len == cap).
	n := len(key)
	ql, pl := escapedLen(key, true), escapedLen(key, false)
	b64, raw := base64.StdEncoding.EncodedLen(n), base64.RawStdEncoding.EncodedLen(n)
	gl, jl := quotedLen(key, quoteGo), quotedLen(key, quoteJSON)
	buf := make([]byte, 0, n+2*b64+2*raw+2*hex.EncodedLen(n)+2*ql+2*pl+gl+jl)
	// mark makes what was appended since the last mark the next form, and returns it.
	i, start := 0, 0
	mark := func() []byte {
		f := buf[start:len(buf):len(buf)]
		fs.all[i], i, start = f, i+1, len(buf)
		return f
	}
	buf = append(buf, key...)
	mark()
	buf = base64.StdEncoding.AppendEncode(buf, key)
	mark()
	buf = base64.RawStdEncoding.AppendEncode(buf, key)
	mark()
	buf = base64.URLEncoding.AppendEncode(buf, key)
	mark()
	buf = base64.RawURLEncoding.AppendEncode(buf, key)
	mark()
	buf = hex.AppendEncode(buf, key)
	mark()
	buf = hex.AppendEncode(buf, key)
	upperHex(mark())
	buf = appendEscape(buf, key, true)
	query := mark()
	buf = appendEscape(buf, key, false)
	path := mark()
	// Escapers emit upper-case %XX; other encoders use lower case.
	buf = append(buf, query...)
	lowerPercentHex(mark())
	buf = append(buf, path...)
	lowerPercentHex(mark())
	buf = appendQuoted(buf, key, quoteGo)
	mark()
	buf = appendQuoted(buf, key, quoteJSON)
	mark()
	fs.buf = buf
	if formsBuilt != nil {
		formsBuilt(buf)
	}
	// Longest first, so that replacing a short form cannot break up a longer one that contains it
	// (the padded base64 contains the raw base64, for instance) and leave part of it behind.
	all := fs.all[:]
	slices.SortFunc(all, func(a, b []byte) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), bytes.Compare(a, b))
	})
	all = slices.CompactFunc(all, bytes.Equal)
	if len(all) > 0 && len(all[len(all)-1]) == 0 {
		all = all[:len(all)-1]
	}
	fs.n = len(all)
	return fs
}

// list is the forms, longest first.
func (fs *forms) list() [][]byte { return fs.all[:fs.n] }

// wipe zeroes the buffer every form lives in and forgets them.
func (fs *forms) wipe() {
	clear(fs.buf[:cap(fs.buf)])
	*fs = forms{}
}

// redact returns s with every form replaced by "[REDACTED]". It searches with strings that are
// views of the buffer (unsafe.String, no copy of the key). That is safe only because nothing
// keeps them: strings.Contains and strings.ReplaceAll only read their argument, and the result is
// made of pieces of s and the marker, so no view outlives this call, let alone wipe.
func (fs *forms) redact(s string) string {
	for _, f := range fs.list() {
		v := unsafe.String(unsafe.SliceData(f), len(f))
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, redacted)
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
	fs := keyForms(key)
	defer fs.wipe()
	return fs.redactJSON(body)
}

// redactJSON is RedactJSON with the key's forms already built. The result never refers to the
// forms' buffer.
func (fs *forms) redactJSON(body []byte) ([]byte, int) {
	fl := fs.list()
	if len(fl) == 0 || len(body) == 0 {
		return body, 0
	}
	shortest := len(fl[len(fl)-1])
	holds := func(b []byte) bool {
		if len(b) < shortest {
			return false
		}
		for _, f := range fl {
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
		scratch []byte // decoded escaped strings: it may hold the key the upstream echoed escaped
	)
	// Best effort: the last backing array only (one outgrown earlier, and the body itself, still
	// hold what the upstream echoed until the collector reuses them).
	defer func() { clear(scratch[:cap(scratch)]) }()
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

// escapes reports whether url.QueryEscape (query) or url.PathEscape (!query) writes c as %XX.
// QueryEscape writes ' ' as '+' instead; appendEscape handles that before asking.
func escapes(c byte, query bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return false
	}
	switch c {
	case '-', '_', '.', '~': // unreserved
		return false
	case '$', '&', '+', ':', '=', '@':
		// Reserved, but a path segment may hold them (RFC 3986 §3.3); a query component may
		// not. The other reserved bytes ('/', ';', ',', '?') are escaped in both.
		return query
	}
	return true
}

// escapedLen is len(appendEscape(nil, s, query)).
func escapedLen(s []byte, query bool) int {
	n := len(s)
	for _, c := range s {
		if escapes(c, query) && !(query && c == ' ') {
			n += 2
		}
	}
	return n
}

// appendEscape appends url.QueryEscape(string(s)) (query) or url.PathEscape(string(s)) (!query)
// to dst, byte for byte, without making a string of s.
func appendEscape(dst, s []byte, query bool) []byte {
	const hexDigits = "0123456789ABCDEF"
	for _, c := range s {
		switch {
		case query && c == ' ':
			dst = append(dst, '+')
		case escapes(c, query):
			dst = append(dst, '%', hexDigits[c>>4], hexDigits[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// upperHex upper-cases the hex digits in b, in place.
func upperHex(b []byte) {
	for i, c := range b {
		if 'a' <= c && c <= 'f' {
			b[i] = c - ('a' - 'A')
		}
	}
}

// lowerPercentHex lower-cases, in place, the two hex digits after each '%'.
func lowerPercentHex(b []byte) {
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
}

// Quoting styles for appendQuoted.
const (
	quoteGo   = iota // strconv.Quote, fmt's %q
	quoteJSON        // encoding/json (HTML-safe, as json.Marshal writes)
)

// quotedLen is len(appendQuoted(nil, s, style)).
func quotedLen(s []byte, style int) int {
	var tmp [10]byte
	n := 0
	for i := 0; i < len(s); {
		r, size := decodeRune(s[i:])
		n += len(quoteRune(&tmp, style, r, s[i:i+size]))
		i += size
	}
	return n
}

// appendQuoted appends to dst what strconv.Quote (quoteGo) or json.Marshal (quoteJSON) writes
// between its quotes for s, byte for byte, without making a string of s. Escapes are built in a
// stack array, so no copy of a piece of the key is left on the heap.
func appendQuoted(dst, s []byte, style int) []byte {
	var tmp [10]byte
	for i := 0; i < len(s); {
		r, size := decodeRune(s[i:])
		dst = append(dst, quoteRune(&tmp, style, r, s[i:i+size])...)
		i += size
	}
	return dst
}

// decodeRune is utf8.DecodeRune with a fast path for ASCII.
func decodeRune(s []byte) (rune, int) {
	if s[0] < utf8.RuneSelf {
		return rune(s[0]), 1
	}
	return utf8.DecodeRune(s)
}

// quoteRune returns what style writes for the rune r, whose encoding is raw (for an invalid byte,
// r is utf8.RuneError and raw that byte): raw itself, or an escape built in tmp.
func quoteRune(tmp *[10]byte, style int, r rune, raw []byte) []byte {
	const hexDigits = "0123456789abcdef"
	esc := func(c byte) []byte { tmp[0], tmp[1] = '\\', c; return tmp[:2] }
	// hexEsc writes '\\', prefix ('x', 'u' or 'U') and v in width hex digits.
	hexEsc := func(prefix byte, v uint32, width int) []byte {
		tmp[0], tmp[1] = '\\', prefix
		for i := range width {
			tmp[2+i] = hexDigits[v>>(4*(width-1-i))&15]
		}
		return tmp[:2+width]
	}
	invalid := r == utf8.RuneError && len(raw) == 1
	if style == quoteJSON {
		switch {
		case r == '"' || r == '\\':
			return esc(byte(r))
		case r == '\b':
			return esc('b')
		case r == '\f':
			return esc('f')
		case r == '\n':
			return esc('n')
		case r == '\r':
			return esc('r')
		case r == '\t':
			return esc('t')
		case r < ' ' || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029':
			return hexEsc('u', uint32(r), 4)
		case invalid:
			return hexEsc('u', utf8.RuneError, 4)
		}
		return raw
	}
	switch {
	case invalid:
		return hexEsc('x', uint32(raw[0]), 2)
	case r == '"' || r == '\\':
		return esc(byte(r))
	case strconv.IsPrint(r):
		return raw
	case r == '\a':
		return esc('a')
	case r == '\b':
		return esc('b')
	case r == '\f':
		return esc('f')
	case r == '\n':
		return esc('n')
	case r == '\r':
		return esc('r')
	case r == '\t':
		return esc('t')
	case r == '\v':
		return esc('v')
	case r < ' ' || r == 0x7f:
		return hexEsc('x', uint32(r), 2)
	case r < 0x10000:
		return hexEsc('u', uint32(r), 4)
	}
	return hexEsc('U', uint32(r), 8)
}
