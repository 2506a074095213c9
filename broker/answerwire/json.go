package answerwire

import (
	"encoding/binary"
	"math"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// AppendJSON appends the answer as the HTTP front sends it: encoding/json's Marshal of the
// map[string]any holding every top-level field of the upstream's answer and "results", the first
// n results' objects (all for n <= 0). Keys are in sorted order and strings escaped as
// encoding/json escapes them (HTML characters, U+2028 and U+2029 included), numbers written as
// it writes a float64, byte for byte.
func (a *Answer) AppendJSON(dst []byte, n int) []byte {
	var fields []byte
	if md := a.Metadata(); len(md) > 0 {
		_, _, k := protowire.ConsumeTag(md)
		fields, _ = protowire.ConsumeBytes(md[k:])
	}
	dst = append(dst, '{')
	first, results := true, false
	for len(fields) > 0 {
		key, val, rest := nextEntry(fields)
		fields = rest
		if !results && string(key) > "results" {
			dst, first, results = a.appendResults(dst, n, first), false, true
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, key)
		dst = append(dst, ':')
		dst = appendJSONValue(dst, val)
	}
	if !results {
		dst = a.appendResults(dst, n, first)
	}
	return append(dst, '}')
}

// appendResults appends "results":[...] (after a comma unless first).
func (a *Answer) appendResults(dst []byte, n int, first bool) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, `"results":[`...)
	recs := a.Results(n)
	for i := 0; len(recs) > 0; i++ {
		_, _, k := protowire.ConsumeTag(recs)
		rec, m := protowire.ConsumeBytes(recs[k:])
		recs = recs[k+m:]
		if i > 0 {
			dst = append(dst, ',')
		}
		// The result's raw Struct is its last field (5), after the typed fields.
		for len(rec) > 0 {
			num, typ, k := protowire.ConsumeTag(rec)
			m := protowire.ConsumeFieldValue(num, typ, rec[k:])
			if num == 5 {
				raw, _ := protowire.ConsumeBytes(rec[k:])
				dst = appendJSONObject(dst, raw)
			}
			rec = rec[k+m:]
		}
	}
	return append(dst, ']')
}

// nextEntry splits the first map entry off a Struct's fields: its key and Value message.
func nextEntry(fields []byte) (key, val, rest []byte) {
	_, _, k := protowire.ConsumeTag(fields)
	entry, m := protowire.ConsumeBytes(fields[k:])
	rest = fields[k+m:]
	_, _, k = protowire.ConsumeTag(entry)
	key, m = protowire.ConsumeBytes(entry[k:])
	entry = entry[k+m:]
	_, _, k = protowire.ConsumeTag(entry)
	val, _ = protowire.ConsumeBytes(entry[k:])
	return key, val, rest
}

// appendJSONObject appends a Struct's content as a JSON object.
func appendJSONObject(dst, fields []byte) []byte {
	dst = append(dst, '{')
	for i := 0; len(fields) > 0; i++ {
		key, val, rest := nextEntry(fields)
		fields = rest
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, key)
		dst = append(dst, ':')
		dst = appendJSONValue(dst, val)
	}
	return append(dst, '}')
}

// appendJSONValue appends a Value message as JSON.
func appendJSONValue(dst, v []byte) []byte {
	switch v[0] {
	case tagNull:
		return append(dst, "null"...)
	case tagBool:
		if v[1] != 0 {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case tagNumber:
		return appendJSONFloat(dst, math.Float64frombits(binary.LittleEndian.Uint64(v[1:])))
	case tagString:
		s, _ := protowire.ConsumeBytes(v[1:])
		return appendJSONString(dst, s)
	case tagStruct:
		s, _ := protowire.ConsumeBytes(v[1:])
		return appendJSONObject(dst, s)
	default: // tagList
		l, _ := protowire.ConsumeBytes(v[1:])
		dst = append(dst, '[')
		for i := 0; len(l) > 0; i++ {
			_, _, k := protowire.ConsumeTag(l)
			e, m := protowire.ConsumeBytes(l[k:])
			l = l[k+m:]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONValue(dst, e)
		}
		return append(dst, ']')
	}
}

// appendJSONFloat writes f as encoding/json writes a float64 (as ES6 does).
func appendJSONFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s quoted as encoding/json does with HTML escaping (its default).
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRune(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
