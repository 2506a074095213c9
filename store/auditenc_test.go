package store

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// checkEncoding fails t unless appendAuditRecord makes exactly json.Marshal's bytes (or fails
// where it fails).
func checkEncoding(t *testing.T, rec AuditRecord) {
	t.Helper()
	want, wantErr := json.Marshal(&rec)
	got, err := appendAuditRecord([]byte("x"), &rec) // appends: keeps what dst held
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("appendAuditRecord error %v, json.Marshal error %v (record %+v)", err, wantErr, rec)
	}
	if wantErr == nil && !bytes.Equal(got, append([]byte("x"), want...)) {
		t.Fatalf("appendAuditRecord =\n%s\njson.Marshal =\nx%s", got, want)
	}
}

// The hand encoder writes the bytes encoding/json wrote, so the MACs and the hash chain of every
// record written before it still verify, and records keep their shape.
func TestAuditEncoderMatchesJSON(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	full := AuditRecord{Seq: 18446744073709551615, Time: time.Date(2026, 12, 3, 4, 5, 6, 7, paris), PeerKnown: true,
		UID: 4294967295, GID: 7, PID: -2147483648, TokenID: "abc", Method: "/credbroker.v1.SearchService/Search",
		Tool: "web_search", Code: "OK", LatencyMicros: -5, Credential: "scavio_api_key", CredentialVersion: 3,
		QueryLen: -1, QueryMAC: "00ff", Event: "rotate", Credits: 1, CreditsSaved: 2, TokenLabel: "l", PIDFD: true,
		Exe: "/usr/bin/x", Comm: "x", Workload: "w", Count: 9, Prev: []byte{0, 1, 2, 255}}
	for _, tc := range []struct {
		name string
		rec  AuditRecord
	}{
		{"zero", AuditRecord{}},
		{"every field", full},
		{"empty prev is not null", AuditRecord{Seq: 1, Method: "m", Prev: []byte{}}},
		{"utc nanoseconds", AuditRecord{Seq: 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.UTC), Method: "m"}},
		{"html and quotes", AuditRecord{Method: `<a href="x">&</a> \ /`, Code: "\"'"}},
		{"control characters", AuditRecord{Method: "\x00\x01\b\f\n\r\t\x1f\x7f", Exe: "a\u2028b\u2029c"}},
		{"invalid utf-8", AuditRecord{Method: "a\xffb\xc3", Comm: "\xed\xa0\x80", Workload: "é世界🙂"}},
		{"year 10000 fails like json", AuditRecord{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"negative year fails like json", AuditRecord{Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{"zone offset of a day", AuditRecord{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("X", 24*3600))}},
		{"zone offset with seconds", AuditRecord{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("X", -(3*3600+61)))}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkEncoding(t, tc.rec) })
	}
}

func FuzzAuditEncoderMatchesJSON(f *testing.F) {
	f.Add(uint64(1), int64(1764734706123456789), int(0), true, uint32(1000), uint32(1000), int32(42), "tok", "/m", "web_search", "OK",
		int64(120), "scavio_api_key", uint64(2), 12, "abcd", "", uint64(1), uint64(0), "label", false, "/bin/sh", "sh", "", uint64(0), []byte{1, 2})
	f.Add(uint64(0), int64(-62135596800), int(-3600), false, uint32(0), uint32(0), int32(-1), "<>&", "\u2028", "\xff", "\"\\",
		int64(-1), "\t", uint64(0), 0, "", "e", uint64(0), uint64(5), "", true, "", "", "w", uint64(3), []byte(nil))
	f.Fuzz(func(t *testing.T, seq uint64, unixNano int64, zone int, peer bool, uid, gid uint32, pid int32, tokenID, method, tool, code string,
		latency int64, cred string, credVersion uint64, queryLen int, queryMAC, event string, credits, saved uint64, label string,
		pidfd bool, exe, comm, workload string, count uint64, prev []byte) {
		tm := time.Unix(0, unixNano).In(time.FixedZone("Z", zone%(30*3600)))
		checkEncoding(t, AuditRecord{Seq: seq, Time: tm, PeerKnown: peer, UID: uid, GID: gid, PID: pid, TokenID: tokenID,
			Method: method, Tool: tool, Code: code, LatencyMicros: latency, Credential: cred, CredentialVersion: credVersion,
			QueryLen: queryLen, QueryMAC: queryMAC, Event: event, Credits: credits, CreditsSaved: saved, TokenLabel: label,
			PIDFD: pidfd, Exe: exe, Comm: comm, Workload: workload, Count: count, Prev: prev})
	})
}

// recordMAC's tags are the Tink primitive's: each verifies with it and equals what it computes
// (HMAC is deterministic), for every HMAC key template, across reuses of the one state.
func TestRecordMACMatchesTink(t *testing.T) {
	for _, tc := range []struct {
		name string
		tmpl func() *tinkpb.KeyTemplate
	}{
		{"HMAC-SHA256 256-bit tag (the audit keyset's)", mac.HMACSHA256Tag256KeyTemplate},
		{"HMAC-SHA256 128-bit tag", mac.HMACSHA256Tag128KeyTemplate},
		{"HMAC-SHA512 512-bit tag", mac.HMACSHA512Tag512KeyTemplate},
		// The other output prefixes (QueryDigest takes a tag's last 16 bytes, whatever its prefix).
		{"HMAC-SHA256 LEGACY prefix", withPrefix(mac.HMACSHA256Tag256KeyTemplate, tinkpb.OutputPrefixType_LEGACY)},
		{"HMAC-SHA256 CRUNCHY prefix", withPrefix(mac.HMACSHA256Tag256KeyTemplate, tinkpb.OutputPrefixType_CRUNCHY)},
		{"HMAC-SHA256 RAW (no prefix)", withPrefix(mac.HMACSHA256Tag256KeyTemplate, tinkpb.OutputPrefixType_RAW)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := keyset.NewHandle(tc.tmpl())
			if err != nil {
				t.Fatal(err)
			}
			r, m := hmacRecordMAC(t, h)
			for i, data := range [][]byte{nil, []byte("a"), bytes.Repeat([]byte("record "), 300), []byte("a")} {
				got, err := r.appendMAC([]byte("pre"), data)
				if err != nil {
					t.Fatal(err)
				}
				want, err := m.ComputeMAC(data)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got[3:], want) || string(got[:3]) != "pre" || len(want) != r.size() {
					t.Fatalf("data %d: tag %x, Tink %x (size %d)", i, got, want, r.size())
				}
				if err := m.VerifyMAC(got[3:], data); err != nil {
					t.Fatalf("data %d: Tink does not verify the tag: %v", i, err)
				}
				checkVerify(t, r, m, want, data)
			}
		})
	}
}

// hmacRecordMAC returns the recordMAC of h, an HMAC keyset, and h's Tink primitive; it fails if
// newRecordMAC fell back to the primitive.
func hmacRecordMAC(t *testing.T, h *keyset.Handle) (*recordMAC, tink.MAC) {
	t.Helper()
	m, err := mac.New(h)
	if err != nil {
		t.Fatal(err)
	}
	r := newRecordMAC(h, m)
	if r.h == nil {
		t.Fatal("newRecordMAC fell back to Tink for an HMAC keyset")
	}
	return r, m
}

// checkVerify asserts that r.verify accepts tag for data and rejects every one-bit change of
// either, a shortened tag and a lengthened one, as m.VerifyMAC does.
func checkVerify(t *testing.T, r *recordMAC, m tink.MAC, tag, data []byte) {
	t.Helper()
	try := func(what string, tag, data []byte) {
		t.Helper()
		if got, tink := r.verify(tag, data), m.VerifyMAC(tag, data) == nil; got != tink {
			t.Fatalf("%s: verify says %v, Tink says %v", what, got, tink)
		}
	}
	if !r.verify(tag, data) {
		t.Fatal("verify refuses the tag")
	}
	for i := range len(tag) * 8 {
		bad := bytes.Clone(tag)
		bad[i/8] ^= 1 << (i % 8)
		if r.verify(bad, data) {
			t.Fatalf("verify accepts the tag with bit %d flipped", i)
		}
		try("tag bit flipped", bad, data)
	}
	for i := range min(len(data), 64) * 8 {
		bad := bytes.Clone(data)
		bad[i/8] ^= 1 << (i % 8)
		if r.verify(tag, bad) {
			t.Fatalf("verify accepts data with bit %d flipped", i)
		}
	}
	for _, bad := range [][]byte{nil, tag[:len(tag)-1], append(bytes.Clone(tag), 0)} {
		if r.verify(bad, data) {
			t.Fatalf("verify accepts a %d-byte tag", len(bad))
		}
		try("tag resized", bad, data)
	}
}

// A tag under a key of the keyset other than the primary verifies, as with Tink's primitive:
// verify leaves it to the primitive.
func TestRecordMACVerifiesOtherKeys(t *testing.T) {
	old, err := keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	oldMAC, err := mac.New(old)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("sealed under the old primary")
	oldTag, err := oldMAC.ComputeMAC(data)
	if err != nil {
		t.Fatal(err)
	}
	mgr := keyset.NewManagerFromHandle(old)
	id, err := mgr.Add(mac.HMACSHA512Tag256KeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.SetPrimary(id); err != nil {
		t.Fatal(err)
	}
	h, err := mgr.Handle()
	if err != nil {
		t.Fatal(err)
	}
	r, m := hmacRecordMAC(t, h)
	if !r.verify(oldTag, data) {
		t.Fatal("verify refuses a tag under the keyset's other key")
	}
	newTag, err := m.ComputeMAC(data)
	if err != nil {
		t.Fatal(err)
	}
	checkVerify(t, r, m, newTag, data)
}

// BenchmarkSealAuditRecord is the audit writer's per-record work: encoding/json and a Tink
// ComputeMAC (what it did before) against the hand encoder and the reused HMAC state (sealRecord).
func BenchmarkSealAuditRecord(b *testing.B) {
	h, err := keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	m, err := mac.New(h)
	if err != nil {
		b.Fatal(err)
	}
	w := &auditWriter{mac: m, rmac: newRecordMAC(h, m)}
	rec := AuditRecord{Seq: 123456, Time: time.Now().UTC(), PeerKnown: true, UID: 1000, GID: 1000, PID: 4242,
		TokenID: "0123456789abcdef", Method: "/credbroker.v1.SearchService/Search", Tool: "web_search", Code: "OK",
		LatencyMicros: 812, Credential: "scavio_api_key", CredentialVersion: 3, QueryLen: 24,
		QueryMAC: "00112233445566778899aabbccddeeff", Credits: 1, TokenLabel: "mcp-server", PIDFD: true,
		Exe: "/usr/local/bin/scavio-mcp", Comm: "scavio-mcp", Prev: bytes.Repeat([]byte{7}, 37)}
	b.Run("json+tink", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			body, _ := json.Marshal(&rec)
			tag, _ := m.ComputeMAC(body)
			_ = w.join(tag, body)
		}
	})
	b.Run("hand+reused", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := w.sealRecord(&rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// withPrefix is tmpl with its output prefix type replaced.
func withPrefix(tmpl func() *tinkpb.KeyTemplate, prefix tinkpb.OutputPrefixType) func() *tinkpb.KeyTemplate {
	return func() *tinkpb.KeyTemplate {
		t := tmpl()
		t.OutputPrefixType = prefix
		return t
	}
}
