// Package answerwire turns an upstream search answer (JSON) into the protobuf wire bytes the gRPC
// edge sends for it: the credbroker.v1.SearchResult records of SearchResponse.results and the
// google.protobuf.Struct of SearchResponse.metadata, byte for byte what proto's deterministic
// marshal writes for the messages the edge used to build (encoding/json into map[string]any,
// then structpb). It does so in one pass that also validates the body as strictly as
// encoding/json does, so a cache miss builds no maps and no structpb values.
//
// Answer.AppendJSON writes the HTTP front's answer from the same form, as json.Marshal of those
// maps wrote it.
//
// It holds no policy and imports nothing of the broker; it never puts the body in an error. The
// broker's TestTranscodeAnswer and FuzzTranscodeAnswer hold it to the old path (encoding/json,
// structpb, proto's deterministic marshal, json.Marshal), refusals included.
package answerwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrNotAnswer is Transcode's one error: the body is not JSON, or not an answer's shape (a
// top-level object, or null, whose "results" is missing, null or an array of objects). The caller
// words it (the broker decodes the body the slow way to say exactly what is wrong).
var ErrNotAnswer = errors.New("upstream answer is not valid")

// Field tags, wire type included, of the messages written (google/protobuf/struct.proto and
// proto/credbroker/v1).
const (
	tagStructFields = 1<<3 | 2 // Struct.fields, map<string, Value>: one entry message each
	tagEntryKey     = 1<<3 | 2 // map entry key
	tagEntryValue   = 2<<3 | 2 // map entry value
	tagNull         = 1 << 3   // Value.null_value (wire type 0, varint)
	tagNumber       = 2<<3 | 1 // Value.number_value (double)
	tagString       = 3<<3 | 2 // Value.string_value
	tagBool         = 4 << 3   // Value.bool_value (varint)
	tagStruct       = 5<<3 | 2 // Value.struct_value
	tagList         = 6<<3 | 2 // Value.list_value
	tagListValues   = 1<<3 | 2 // ListValue.values
	tagTitle        = 1<<3 | 2 // SearchResult.title
	tagURL          = 2<<3 | 2 // SearchResult.url
	tagSnippet      = 3<<3 | 2 // SearchResult.snippet
	tagPosition     = 4 << 3   // SearchResult.position (int32, varint)
	tagRaw          = 5<<3 | 2 // SearchResult.raw
	tagResults      = 1<<3 | 2 // SearchResponse.results
	tagMetadata     = 5<<3 | 2 // SearchResponse.metadata
)

// maxDepth is encoding/json's nesting limit (arrays and objects); one more is a syntax error.
const maxDepth = 10000

// Answer is an upstream answer as wire bytes. It never changes once made.
type Answer struct {
	buf  []byte // every result's SearchResponse.results record, then the metadata record
	ends []int  // ends[i] is where result i's record ends in buf
	meta int    // where the metadata record starts (it is absent when the answer had no other field)
}

// Len is how many results the answer holds.
func (a *Answer) Len() int { return len(a.ends) }

// Results returns the SearchResponse.results records (field 1) of the first n results, or of all
// of them for n <= 0. The bytes are shared: never modify them.
func (a *Answer) Results(n int) []byte {
	if n <= 0 || n >= len(a.ends) {
		return a.buf[:a.meta]
	}
	return a.buf[:a.ends[n-1]]
}

// Metadata returns the SearchResponse.metadata record (field 5): every top-level field but
// "results", or nothing when there was none. The bytes are shared: never modify them.
func (a *Answer) Metadata() []byte { return a.buf[a.meta:] }

// Number reports the top-level field key of the answer's metadata if it is a number (what
// map[string]any held as a float64).
func (a *Answer) Number(key string) (float64, bool) {
	b := a.Metadata()
	if len(b) == 0 {
		return 0, false
	}
	_, _, n := protowire.ConsumeTag(b)
	fields, _ := protowire.ConsumeBytes(b[n:])
	for len(fields) > 0 {
		_, _, n := protowire.ConsumeTag(fields)
		entry, m := protowire.ConsumeBytes(fields[n:])
		if n < 0 || m < 0 {
			return 0, false
		}
		fields = fields[n+m:]
		_, _, n = protowire.ConsumeTag(entry)
		k, m := protowire.ConsumeBytes(entry[n:])
		if string(k) != key {
			continue
		}
		entry = entry[n+m:]
		_, _, n = protowire.ConsumeTag(entry)
		v, _ := protowire.ConsumeBytes(entry[n:])
		if len(v) == 9 && v[0] == tagNumber {
			return math.Float64frombits(binary.LittleEndian.Uint64(v[1:])), true
		}
		return 0, false
	}
	return 0, false
}

// span is one entry of an object being parsed, where it lies in parser.out.
type span struct {
	start, end int // the whole entry record, tag included
	key, klen  int // the key's bytes
	val, vlen  int // the Value message's bytes
}

// How the last top-level "results" member looked.
const (
	resAbsent = iota // missing or null
	resArray         // an array (of objects unless resBad)
	resOther         // anything else: not an answer
)

type parser struct {
	s     []byte
	i     int
	depth int
	out   []byte // the encoding being built
	tmp   []byte // scratch for reordering an object's entries
	hdr   []byte // scratch for a result's typed fields
	spans []span // entries of the objects being parsed, innermost last

	resKind          int
	resBad           bool // an item of the results array is not an object
	resStart, resEnd int  // the results' records in out
	resEnds          []int
}

var parsers = sync.Pool{New: func() any { return new(parser) }}

// Transcode validates body as encoding/json would decode it into map[string]any and returns its
// encoding. Strings are decoded as encoding/json decodes them (invalid UTF-8 and lone surrogates
// become U+FFFD), numbers as float64, duplicate keys keep the last value, and a Struct's entries
// are in key order, as proto's deterministic marshal writes them.
func Transcode(body []byte) (*Answer, error) {
	p := parsers.Get().(*parser)
	defer p.release()
	p.s, p.i = body, 0
	p.ws()
	if p.i >= len(p.s) {
		return nil, ErrNotAnswer
	}
	base := len(p.spans)
	switch p.s[p.i] {
	case '{':
		var err error
		if base, err = p.object(true); err != nil {
			return nil, err
		}
	case 'n':
		if !p.literal("null") {
			return nil, ErrNotAnswer
		}
	default:
		// An array, string, number or bool: not an object (the broker finds out whether it is
		// JSON at all).
		return nil, ErrNotAnswer
	}
	p.ws()
	if p.i != len(p.s) || p.resKind == resOther || p.resKind == resArray && p.resBad {
		return nil, ErrNotAnswer
	}
	var results []byte
	if p.resKind == resArray {
		results = p.out[p.resStart:p.resEnd]
	}
	metaLen := 0
	for _, sp := range p.spans[base:] {
		metaLen += sp.end - sp.start
	}
	size := len(results)
	if metaLen > 0 {
		size += 1 + protowire.SizeVarint(uint64(metaLen)) + metaLen
	}
	a := &Answer{buf: make([]byte, 0, size), meta: len(results)}
	a.buf = append(a.buf, results...)
	if metaLen > 0 {
		a.buf = append(a.buf, tagMetadata)
		a.buf = protowire.AppendVarint(a.buf, uint64(metaLen))
		for _, sp := range p.spans[base:] {
			a.buf = append(a.buf, p.out[sp.start:sp.end]...)
		}
	}
	if len(results) > 0 {
		a.ends = slices.Clone(p.resEnds)
	}
	return a, nil
}

// release returns p to the pool, without a buffer grown too large to keep.
func (p *parser) release() {
	if cap(p.out) > 1<<20 || cap(p.tmp) > 1<<20 || cap(p.spans) > 1<<14 {
		return
	}
	*p = parser{out: p.out[:0], tmp: p.tmp[:0], hdr: p.hdr[:0], spans: p.spans[:0], resEnds: p.resEnds[:0]}
	parsers.Put(p)
}

func (p *parser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// literal consumes lit (true, false or null) at p.i.
func (p *parser) literal(lit string) bool {
	if !bytes.HasPrefix(p.s[p.i:], unsafe.Slice(unsafe.StringData(lit), len(lit))) {
		return false
	}
	p.i += len(lit)
	return true
}

// open starts a length-delimited field with tag, its length to be set by close.
func (p *parser) open(tag byte) int {
	p.out = append(p.out, tag, 0)
	return len(p.out)
}

// close sets the length of the field opened at pos to what was written since, and returns how
// far that content moved to make room for a length of more than one byte.
func (p *parser) close(pos int) int {
	n := len(p.out) - pos
	if n < 0x80 {
		p.out[pos-1] = byte(n)
		return 0
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	p.out = append(p.out, make([]byte, extra)...)
	copy(p.out[pos+extra:], p.out[pos:pos+n])
	protowire.AppendVarint(p.out[pos-1:pos-1], uint64(n))
	return extra
}

// value parses the JSON value at p.i and writes it as a google.protobuf.Value message.
func (p *parser) value() error {
	p.ws()
	if p.i >= len(p.s) {
		return ErrNotAnswer
	}
	switch c := p.s[p.i]; {
	case c == '{':
		pos := p.open(tagStruct)
		base, err := p.object(false)
		if err != nil {
			return err
		}
		p.spans = p.spans[:base]
		p.close(pos)
	case c == '[':
		pos := p.open(tagList)
		if err := p.array(func(int) error {
			e := p.open(tagListValues)
			if err := p.value(); err != nil {
				return err
			}
			p.close(e)
			return nil
		}); err != nil {
			return err
		}
		p.close(pos)
	case c == '"':
		pos := p.open(tagString)
		if err := p.str(); err != nil {
			return err
		}
		p.close(pos)
	case c == 't':
		if !p.literal("true") {
			return ErrNotAnswer
		}
		p.out = append(p.out, tagBool, 1)
	case c == 'f':
		if !p.literal("false") {
			return ErrNotAnswer
		}
		p.out = append(p.out, tagBool, 0)
	case c == 'n':
		if !p.literal("null") {
			return ErrNotAnswer
		}
		p.out = append(p.out, tagNull, 0)
	case c == '-' || '0' <= c && c <= '9':
		f, err := p.number()
		if err != nil {
			return err
		}
		p.out = append(p.out, tagNumber)
		p.out = binary.LittleEndian.AppendUint64(p.out, math.Float64bits(f))
	default:
		return ErrNotAnswer
	}
	return nil
}

// array parses the array at p.i, calling item for each element (at its first byte or the
// whitespace before it).
func (p *parser) array(item func(i int) error) error {
	p.i++ // [
	if p.depth++; p.depth > maxDepth {
		return ErrNotAnswer
	}
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.depth--
		return nil
	}
	for n := 0; ; n++ {
		if err := item(n); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.s) {
			return ErrNotAnswer
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			p.depth--
			return nil
		default:
			return ErrNotAnswer
		}
	}
}

// object parses the object at p.i and writes its google.protobuf.Struct message's content, its
// entries in key order, one per key (the last value of a duplicate). The entries' spans are left
// in p.spans[base:] for the caller, which truncates p.spans to base when done. The top-level
// object (top) keeps its entries where they were written (Transcode copies them out in order),
// and parses its "results" member as the results, not as an entry.
func (p *parser) object(top bool) (base int, err error) {
	p.i++ // {
	if p.depth++; p.depth > maxDepth {
		return 0, ErrNotAnswer
	}
	base = len(p.spans)
	start := len(p.out)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.depth--
		return base, nil
	}
	for {
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return 0, ErrNotAnswer
		}
		e := p.open(tagStructFields)
		k := p.open(tagEntryKey)
		if err := p.str(); err != nil {
			return 0, err
		}
		klen := len(p.out) - k
		key := k + p.close(k)
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return 0, ErrNotAnswer
		}
		p.i++
		if top && string(p.out[key:key+klen]) == "results" {
			p.out = p.out[:e-2]
			if err := p.results(); err != nil {
				return 0, err
			}
		} else {
			v := p.open(tagEntryValue)
			if err := p.value(); err != nil {
				return 0, err
			}
			vlen := len(p.out) - v
			val := v + p.close(v)
			moved := p.close(e)
			p.spans = append(p.spans, span{start: e - 2, end: len(p.out), key: key + moved, klen: klen, val: val + moved, vlen: vlen})
		}
		p.ws()
		if p.i >= len(p.s) {
			return 0, ErrNotAnswer
		}
		if p.s[p.i] == ',' {
			p.i++
			continue
		}
		if p.s[p.i] != '}' {
			return 0, ErrNotAnswer
		}
		p.i++
		break
	}
	p.depth--
	p.order(base, start, top)
	return base, nil
}

func (p *parser) keyOf(sp span) []byte { return p.out[sp.key : sp.key+sp.klen] }

// order puts the entries in p.spans[base:] in key order, keeping the last of equal keys (as
// encoding/json's map does), and unless top rewrites them in that order from start on.
func (p *parser) order(base, start int, top bool) {
	sps := p.spans[base:]
	sorted := true
	for i := 1; i < len(sps); i++ {
		if bytes.Compare(p.keyOf(sps[i-1]), p.keyOf(sps[i])) >= 0 {
			sorted = false
			break
		}
	}
	if sorted {
		return
	}
	slices.SortStableFunc(sps, func(a, b span) int { return bytes.Compare(p.keyOf(a), p.keyOf(b)) })
	// Keep the last of each run of equal keys (the stable sort kept them in body order).
	w := 0
	for i := range sps {
		if i+1 < len(sps) && bytes.Equal(p.keyOf(sps[i]), p.keyOf(sps[i+1])) {
			continue
		}
		sps[w] = sps[i]
		w++
	}
	p.spans = p.spans[:base+w]
	sps = sps[:w]
	if top {
		return
	}
	p.tmp = p.tmp[:0]
	for i, sp := range sps {
		moved := start + len(p.tmp) - sp.start
		p.tmp = append(p.tmp, p.out[sp.start:sp.end]...)
		sps[i] = span{start: sp.start + moved, end: sp.end + moved, key: sp.key + moved, klen: sp.klen, val: sp.val + moved, vlen: sp.vlen}
	}
	p.out = append(p.out[:start], p.tmp...)
}

// results parses the top-level "results" member's value: the last one counts, as the last of
// duplicate keys does in encoding/json.
func (p *parser) results() error {
	p.ws()
	if p.i >= len(p.s) {
		return ErrNotAnswer
	}
	switch p.s[p.i] {
	case 'n':
		if !p.literal("null") {
			return ErrNotAnswer
		}
		p.resKind = resAbsent
		return nil
	case '[':
	default:
		p.resKind = resOther
		m := len(p.out)
		err := p.value()
		p.out = p.out[:m]
		return err
	}
	p.resKind, p.resBad, p.resEnds, p.resStart = resArray, false, p.resEnds[:0], len(p.out)
	err := p.array(func(i int) error {
		p.ws()
		if p.i >= len(p.s) {
			return ErrNotAnswer
		}
		if p.s[p.i] != '{' {
			// Not an object: the answer is refused, once the body is known to be JSON.
			p.resBad = true
			m := len(p.out)
			err := p.value()
			p.out = p.out[:m]
			return err
		}
		rec := p.open(tagResults)
		raw := len(p.out)
		base, err := p.object(false)
		if err != nil {
			return err
		}
		p.result(i, base, raw)
		p.spans = p.spans[:base]
		p.close(rec)
		p.resEnds = append(p.resEnds, len(p.out)-p.resStart)
		return nil
	})
	p.resEnd = len(p.out)
	return err
}

// result writes the typed fields of result i before its Struct (written from raw on, its entries
// in p.spans[base:]): title, url and snippet from the first of their keys whose value is a
// string, position from "position" if it is a number in [1, 1e6], else i+1.
func (p *parser) result(i, base, raw int) {
	title := p.firstString(base, "title")
	url := p.firstString(base, "url", "link")
	snippet := p.firstString(base, "snippet", "description", "content")
	pos := i + 1
	if v := p.lookup(base, "position"); len(v) == 9 && v[0] == tagNumber {
		if f := math.Float64frombits(binary.LittleEndian.Uint64(v[1:])); f >= 1 && f <= 1e6 {
			pos = int(f)
		}
	}
	h := p.hdr[:0]
	for _, f := range [...]struct {
		tag byte
		s   []byte
	}{{tagTitle, title}, {tagURL, url}, {tagSnippet, snippet}} {
		if len(f.s) > 0 {
			h = append(h, f.tag)
			h = protowire.AppendVarint(h, uint64(len(f.s)))
			h = append(h, f.s...)
		}
	}
	h = append(h, tagPosition)
	h = protowire.AppendVarint(h, uint64(int64(int32(pos))))
	h = append(h, tagRaw)
	h = protowire.AppendVarint(h, uint64(len(p.out)-raw))
	p.hdr = h
	p.out = slices.Insert(p.out, raw, h...)
}

// lookup returns the Value message of key among the entries in p.spans[base:].
func (p *parser) lookup(base int, key string) []byte {
	for _, sp := range p.spans[base:] {
		if string(p.keyOf(sp)) == key {
			return p.out[sp.val : sp.val+sp.vlen]
		}
	}
	return nil
}

// firstString returns the value of the first of keys whose value is a string (possibly empty),
// or nil.
func (p *parser) firstString(base int, keys ...string) []byte {
	for _, k := range keys {
		v := p.lookup(base, k)
		if len(v) == 0 || v[0] != tagString {
			continue
		}
		s, _ := protowire.ConsumeBytes(v[1:])
		return s
	}
	return nil
}

// number parses a JSON number at p.i as encoding/json does into an interface: the grammar of the
// JSON spec, then strconv.ParseFloat (a number out of float64's range is refused).
func (p *parser) number() (float64, error) {
	s, i := p.s, p.i
	start := i
	if s[i] == '-' {
		i++
	}
	switch {
	case i >= len(s):
		return 0, ErrNotAnswer
	case s[i] == '0':
		i++
	case '1' <= s[i] && s[i] <= '9':
		for i++; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		}
	default:
		return 0, ErrNotAnswer
	}
	simple := s[start] != '-' && i-start <= 15
	if i < len(s) && s[i] == '.' {
		simple = false
		i++
		d := i
		for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		}
		if i == d {
			return 0, ErrNotAnswer
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		simple = false
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		d := i
		for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		}
		if i == d {
			return 0, ErrNotAnswer
		}
	}
	p.i = i
	if simple {
		// A non-negative integer of at most 15 digits is exact in a float64.
		var n uint64
		for _, c := range s[start:i] {
			n = n*10 + uint64(c-'0')
		}
		return float64(n), nil
	}
	f, err := strconv.ParseFloat(unsafe.String(&s[start], i-start), 64)
	if err != nil {
		return 0, ErrNotAnswer
	}
	return f, nil
}

// replacement is U+FFFD in UTF-8.
const replacement = "\uFFFD"

// str decodes the JSON string at p.i (its opening quote) as encoding/json does, appending the
// decoded bytes to p.out.
func (p *parser) str() error {
	// out is p.out in a local: the loop appends without writing the parser on every byte.
	s, i, out := p.s, p.i+1, p.out
	defer func() { p.out = out }()
	for {
		j := i
		for j < len(s) {
			if c := s[j]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
				break
			}
			j++
		}
		out = append(out, s[i:j]...)
		i = j
		if i >= len(s) {
			return ErrNotAnswer
		}
		switch c := s[i]; {
		case c == '"':
			p.i = i + 1
			return nil
		case c < 0x20:
			return ErrNotAnswer
		case c == '\\':
			if i+1 >= len(s) {
				return ErrNotAnswer
			}
			switch s[i+1] {
			case '"', '\\', '/':
				out = append(out, s[i+1])
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r := getu4(s[i:])
				if r < 0 {
					return ErrNotAnswer
				}
				i += 6
				if utf16.IsSurrogate(r) {
					// A valid pair is one rune; anything else is U+FFFD for the first half, and
					// what follows is decoded on its own.
					if dec := utf16.DecodeRune(r, getu4(s[i:])); dec != unicode.ReplacementChar {
						i += 6
						r = dec
					} else {
						r = unicode.ReplacementChar
					}
				}
				out = utf8.AppendRune(out, r)
				continue
			default:
				return ErrNotAnswer
			}
			i += 2
		default:
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				out = append(out, replacement...)
			} else {
				out = append(out, s[i:i+size]...)
			}
			i += size
		}
	}
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
