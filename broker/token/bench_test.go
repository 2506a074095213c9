package token

// Benchmarks of the token format, for BENCHMARKS.md (scripts/bench.sh runs them):
//
//	go test -run '^$' -bench . -benchmem ./broker/token

import (
	"crypto/sha256"
	"testing"
)

// BenchmarkParse is the shape and checksum check every call starts with.
func BenchmarkParse(b *testing.B) {
	tok, _, _, err := New()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseVerify adds the secret check: SHA-256 and a constant-time compare.
func BenchmarkParseVerify(b *testing.B) {
	tok, _, hash, err := New()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		p, err := Parse(tok)
		if err != nil || !p.Verify(hash[:]) {
			b.Fatal("does not verify")
		}
	}
}

// BenchmarkNew draws a token (MintToken's CPU part besides the write).
func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := New(); err != nil {
			b.Fatal(err)
		}
	}
}

var sink [32]byte

// BenchmarkSHA256Secret is the hash alone, for scale.
func BenchmarkSHA256Secret(b *testing.B) {
	var secret [32]byte
	b.ReportAllocs()
	for b.Loop() {
		sink = sha256.Sum256(secret[:])
	}
}
