// Package token defines the broker's bearer-token format: how a token is drawn, parsed and
// verified against the SHA-256 the store keeps. It never stores or logs a token.
//
// A token reads cbt_<id>_<secret><checksum>:
//
//	cbt_                fixed prefix, so secret scanners can match it
//	<id>                16 lowercase hex chars (64 random bits): the public accessor
//	<secret>            64 lowercase hex chars (256 random bits)
//	<checksum>          8 lowercase hex chars: CRC-32 (IEEE) of everything before it
//
// The checksum lets a client or scanner reject a mistyped or truncated token offline; it is not a
// security measure (the secret is).
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
)

// Prefix starts every token.
const Prefix = "cbt_"

const (
	idHexLen     = 16
	secretHexLen = 64
	sumHexLen    = 8
	// Len is the length of every token.
	Len = len(Prefix) + idHexLen + 1 + secretHexLen + sumHexLen
)

// ErrMalformed reports a string that is not a well-formed token. Its message never quotes the input.
var ErrMalformed = errors.New("malformed token")

// Parsed is a syntactically valid token.
type Parsed struct {
	ID     string
	secret [32]byte
}

// New draws a token. It returns the token string (shown to the operator once), its id and the
// SHA-256 of its secret (the only part stored).
func New() (tok string, id string, hash [32]byte, err error) {
	var raw [8 + 32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", "", hash, fmt.Errorf("draw token: %w", err)
	}
	id = hex.EncodeToString(raw[:8])
	body := Prefix + id + "_" + hex.EncodeToString(raw[8:])
	tok = body + fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(body)))
	var secret [32]byte
	copy(secret[:], raw[8:])
	return tok, id, sha256.Sum256(secret[:]), nil
}

// Parse checks a token's shape and checksum.
func Parse(s string) (Parsed, error) {
	if len(s) != Len || s[:len(Prefix)] != Prefix || s[len(Prefix)+idHexLen] != '_' {
		return Parsed{}, ErrMalformed
	}
	id := s[len(Prefix) : len(Prefix)+idHexLen]
	secretHex := s[len(Prefix)+idHexLen+1 : Len-sumHexLen]
	sumHex := s[Len-sumHexLen:]
	if !ValidID(id) || !isLowerHex(secretHex) || !isLowerHex(sumHex) {
		return Parsed{}, ErrMalformed
	}
	var want [4]byte
	hex.Decode(want[:], []byte(sumHex))
	got := crc32.ChecksumIEEE([]byte(s[:Len-sumHexLen]))
	if uint32(want[0])<<24|uint32(want[1])<<16|uint32(want[2])<<8|uint32(want[3]) != got {
		return Parsed{}, fmt.Errorf("%w: checksum mismatch (mistyped or truncated?)", ErrMalformed)
	}
	p := Parsed{ID: id}
	hex.Decode(p.secret[:], []byte(secretHex))
	return p, nil
}

// Verify reports whether the token's secret hashes to hash, in constant time.
func (p Parsed) Verify(hash []byte) bool {
	sum := sha256.Sum256(p.secret[:])
	return subtle.ConstantTimeCompare(sum[:], hash) == 1
}

// ValidID reports whether id has the shape of a token id.
func ValidID(id string) bool { return len(id) == idHexLen && isLowerHex(id) }

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
