package token

import (
	"errors"
	"strings"
	"testing"
)

func TestNewParseVerify(t *testing.T) {
	tok, id, hash, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != Len || !strings.HasPrefix(tok, "cbt_"+id+"_") {
		t.Fatalf("token shape: %d %q", len(tok), tok[:21])
	}
	p, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != id || !p.Verify(hash[:]) {
		t.Fatal("parsed token does not verify")
	}
	_, _, other, _ := New()
	if p.Verify(other[:]) {
		t.Fatal("token verified against another token's hash")
	}
	tok2, id2, _, _ := New()
	if tok2 == tok || id2 == id {
		t.Fatal("two tokens are equal")
	}
}

func TestParseRejects(t *testing.T) {
	tok, _, _, _ := New()
	flip := func(i int) string {
		b := []byte(tok)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	cases := []struct{ name, in string }{
		{"empty", ""},
		{"no prefix", "xbt_" + tok[4:]},
		{"truncated", tok[:len(tok)-1]},
		{"extra", tok + "0"},
		{"upper hex", strings.ToUpper(tok[:4]) + tok[4:]},
		{"tampered secret", flip(30)},
		{"tampered id", flip(6)},
		{"tampered checksum", flip(Len - 1)},
		{"missing separator", tok[:20] + "-" + tok[21:]},
		{"non hex", tok[:40] + "z" + tok[41:]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
			if tc.in != "" && strings.Contains(err.Error(), tc.in) {
				t.Fatal("error quotes the token")
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	tok, _, _, _ := New()
	f.Add(tok)
	f.Add("cbt_")
	f.Add("cbt_0123456789abcdef_")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		if len(s) != Len || !ValidID(p.ID) || !strings.HasPrefix(s, Prefix+p.ID+"_") {
			t.Fatalf("accepted %q", s)
		}
	})
}
