package importer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/fernet/fernet-go"
)

var values = map[string]string{"scavio_api_key": "sk_live_TUTORIAL_0123", "other.key": "sk_test_OTHER"}

// fernetFile writes the tutorial's Python store: name -> Fernet token.
func fernetFile(t *testing.T, key *fernet.Key, vals map[string]string) []byte {
	t.Helper()
	m := map[string]string{}
	for n, v := range vals {
		tok, err := fernet.EncryptAndSign([]byte(v), key)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = string(tok)
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	return b
}

// gcmValue encrypts v as the tutorial's JavaScript does: ivhex:taghex:cipherhex, 16-byte IV.
func gcmValue(t *testing.T, key []byte, v string, ivLen int) string {
	t.Helper()
	block, _ := aes.NewCipher(key)
	gcm, err := cipher.NewGCMWithNonceSize(block, ivLen)
	if err != nil {
		t.Fatal(err)
	}
	iv := make([]byte, ivLen)
	rand.Read(iv)
	sealed := gcm.Seal(nil, iv, []byte(v), nil)
	ct, tag := sealed[:len(sealed)-16], sealed[len(sealed)-16:]
	return hex.EncodeToString(iv) + ":" + hex.EncodeToString(tag) + ":" + hex.EncodeToString(ct)
}

func gcmFile(t *testing.T, key []byte, vals map[string]string) []byte {
	t.Helper()
	m := map[string]string{}
	for n, v := range vals {
		m[n] = gcmValue(t, key, v, 16)
	}
	b, _ := json.Marshal(m)
	return b
}

func check(t *testing.T, got []Entry, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, e := range got {
		if i > 0 && got[i-1].Name >= e.Name {
			t.Fatal("entries not in name order")
		}
		if string(e.Value) != want[e.Name] {
			t.Fatalf("entry %s decrypted wrong", e.Name)
		}
	}
}

func TestParseFernet(t *testing.T) {
	var key, other fernet.Key
	key.Generate()
	other.Generate()
	good := fernetFile(t, &key, values)
	tests := []struct {
		name    string
		data    []byte
		key     string
		wantErr string
	}{
		{"ok", good, key.Encode(), ""},
		{"ok with newline after the key", good, key.Encode() + "\n", ""},
		{"wrong key", good, other.Encode(), `does not decrypt with this key`},
		{"not a key", good, "not-a-key", "not a Fernet key"},
		{"empty key", good, "", "not a Fernet key"},
		{"not json", []byte("gAAAA"), key.Encode(), "not valid JSON"},
		{"array", []byte(`["a"]`), key.Encode(), "JSON object"},
		{"number value", []byte(`{"a": 1}`), key.Encode(), "JSON object"},
		{"empty", []byte(`{}`), key.Encode(), "no credentials"},
		{"garbage token", []byte(`{"a": "gAAAAAgarbage"}`), key.Encode(), `entry "a" does not decrypt`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFernet(tc.data, tc.key)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				check(t, got, values)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
			for _, v := range values {
				if strings.Contains(err.Error(), v) {
					t.Fatal("error contains a value")
				}
			}
		})
	}
}

func TestParseAESGCMHex(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	other := make([]byte, 32)
	rand.Read(other)
	hexKey := hex.EncodeToString(key)
	good := gcmFile(t, key, values)
	tampered := func() []byte {
		v := gcmValue(t, key, "sk_x", 16)
		parts := strings.Split(v, ":")
		parts[1] = strings.Repeat("0", 32)
		b, _ := json.Marshal(map[string]string{"a": strings.Join(parts, ":")})
		return b
	}()
	iv12, _ := json.Marshal(map[string]string{"a": gcmValue(t, key, "sk_twelve", 12)})
	tests := []struct {
		name    string
		data    []byte
		key     string
		want    map[string]string
		wantErr string
	}{
		{"ok", good, hexKey, values, ""},
		{"ok uppercase key", good, strings.ToUpper(hexKey), values, ""},
		{"12-byte iv", iv12, hexKey, map[string]string{"a": "sk_twelve"}, ""},
		{"wrong key", good, hex.EncodeToString(other), nil, "does not decrypt with this key"},
		{"short key", good, hexKey[:32], nil, "64 hex characters"},
		{"not hex key", good, strings.Repeat("zz", 32), nil, "64 hex characters"},
		{"tampered tag", tampered, hexKey, nil, `entry "a" does not decrypt`},
		{"two parts", []byte(`{"a": "00:11"}`), hexKey, nil, "not ivhex:taghex:cipherhex"},
		{"bad hex", []byte(`{"a": "zz:11:22"}`), hexKey, nil, "bad hex"},
		{"short tag", []byte(`{"a": "00112233445566778899aabbccddeeff:0011:00"}`), hexKey, nil, "16-byte tag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAESGCMHex(tc.data, tc.key)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				check(t, got, tc.want)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// A name twice in the file is refused, whichever format and however the second is spelled:
// encoding/json would keep the last value silently and the import would store a key nobody chose.
func TestDuplicateNamesRefused(t *testing.T) {
	var fkey fernet.Key
	fkey.Generate()
	tokA, _ := fernet.EncryptAndSign([]byte("sk_live_FIRST"), &fkey)
	tokB, _ := fernet.EncryptAndSign([]byte("sk_live_SECOND"), &fkey)
	gkey := make([]byte, 32)
	rand.Read(gkey)
	gA, gB := gcmValue(t, gkey, "sk_live_FIRST", 16), gcmValue(t, gkey, "sk_live_SECOND", 16)
	for _, tc := range []struct {
		name, file string
		parse      func([]byte) ([]Entry, error)
	}{
		{"fernet", `{"scavio_api_key": "` + string(tokA) + `", "other": "` + string(tokA) + `", "scavio_api_key": "` + string(tokB) + `"}`,
			func(b []byte) ([]Entry, error) { return ParseFernet(b, fkey.Encode()) }},
		{"fernet escaped name", `{"scavio_api_key": "` + string(tokA) + `", "scavio\u005fapi_key": "` + string(tokB) + `"}`,
			func(b []byte) ([]Entry, error) { return ParseFernet(b, fkey.Encode()) }},
		{"aes-gcm", `{"scavio_api_key": "` + gA + `", "scavio_api_key": "` + gB + `"}`,
			func(b []byte) ([]Entry, error) { return ParseAESGCMHex(b, hex.EncodeToString(gkey)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), `the name "scavio_api_key" appears more than once`) {
				t.Fatalf("Parse = %d entries, %v; want the duplicate named", len(got), err)
			}
			if strings.Contains(err.Error(), "sk_live") {
				t.Fatal("error holds a value")
			}
		})
	}
	// Trailing data after the object is not a file we understand either.
	if _, err := ParseFernet([]byte(`{"a": "`+string(tokA)+`"} {"a": "x"}`), fkey.Encode()); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("trailing object: %v", err)
	}
}
