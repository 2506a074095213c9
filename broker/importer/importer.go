// Package importer reads the encrypted credential files of the tutorial credbroker replaces, so
// `brokerctl import` can move them into the broker: a JSON object mapping each credential name to
// either a Fernet token (the Python version, key in MCP_ENCRYPTION_KEY) or "ivhex:taghex:cipherhex"
// AES-256-GCM (the JavaScript version, hex key).
//
// It never puts a value, a key or a ciphertext in an error: messages name the entry only.
package importer

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/fernet/fernet-go"
)

// Formats, as `brokerctl import` names them and the broker records them.
const (
	FormatFernet    = "fernet"
	FormatAESGCMHex = "aes-gcm-hex"
)

// MaxFileSize bounds the file: the tutorial's file holds a handful of keys.
const MaxFileSize = 1 << 20

// Entry is one decrypted credential. The caller clears Value when done.
type Entry struct {
	Name  string
	Value []byte
}

// Clear zeroes every value.
func Clear(entries []Entry) {
	for _, e := range entries {
		clear(e.Value)
	}
}

// readFile parses the file's JSON object, in name order. A name that appears twice is refused:
// encoding/json would keep the last value silently, and which of two keys is the real one is not
// for us to guess. Names are compared after decoding, so "a" and "\u0061" are the same name.
func readFile(data []byte) ([]string, map[string]string, error) {
	if len(data) > MaxFileSize {
		return nil, nil, fmt.Errorf("the file is larger than %d bytes; is it the tutorial's mcp_credentials.enc?", MaxFileSize)
	}
	notJSON := errors.New("the file is not valid JSON; is it the tutorial's mcp_credentials.enc?")
	notObject := errors.New("the file must be a JSON object mapping each credential name to its encrypted value (a string)")
	if !json.Valid(data) {
		return nil, nil, notJSON
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, notObject
	}
	m := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, notJSON
		}
		name, _ := tok.(string) // in an object, a name token is always a string
		tok, err = dec.Token()
		if err != nil {
			return nil, nil, notJSON
		}
		v, ok := tok.(string)
		if !ok {
			return nil, nil, notObject
		}
		if _, dup := m[name]; dup {
			return nil, nil, fmt.Errorf("the name %q appears more than once in the file; which value is right is unclear, so nothing was imported: fix the file", name)
		}
		m[name] = v
	}
	if len(m) == 0 {
		return nil, nil, errors.New("the file holds no credentials")
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, m, nil
}

// ParseFernet decrypts a file of name -> Fernet token with key, the URL-safe base64 Fernet key
// the tutorial keeps in MCP_ENCRYPTION_KEY. Token timestamps are not checked: the tutorial never
// expires its tokens.
func ParseFernet(data []byte, key string) ([]Entry, error) {
	k, err := fernet.DecodeKey(strings.TrimSpace(key))
	if err != nil {
		return nil, errors.New("the key is not a Fernet key (32 bytes, URL-safe base64, as Fernet.generate_key() prints)")
	}
	names, m, err := readFile(data)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(names))
	for _, n := range names {
		v := fernet.VerifyAndDecrypt([]byte(m[n]), 0, []*fernet.Key{k})
		if v == nil {
			Clear(out)
			return nil, fmt.Errorf("entry %q does not decrypt with this key (wrong key, or not a Fernet token)", n)
		}
		out = append(out, Entry{Name: n, Value: v})
	}
	return out, nil
}

// ParseAESGCMHex decrypts a file of name -> "ivhex:taghex:cipherhex" (AES-256-GCM as the
// tutorial's JavaScript writes it: a 16-byte IV and a 16-byte tag) with hexKey, 64 hex characters.
func ParseAESGCMHex(data []byte, hexKey string) ([]Entry, error) {
	key, err := hex.DecodeString(strings.TrimSpace(hexKey))
	if err != nil || len(key) != 32 {
		clear(key)
		return nil, errors.New("the key must be 64 hex characters (a 32-byte AES-256 key, as the tutorial's JavaScript uses)")
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	names, m, err := readFile(data)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(names))
	fail := func(format string, args ...any) ([]Entry, error) {
		Clear(out)
		return nil, fmt.Errorf(format, args...)
	}
	for _, n := range names {
		parts := strings.Split(m[n], ":")
		if len(parts) != 3 {
			return fail("entry %q is not ivhex:taghex:cipherhex", n)
		}
		iv, err1 := hex.DecodeString(parts[0])
		tag, err2 := hex.DecodeString(parts[1])
		ct, err3 := hex.DecodeString(parts[2])
		if err := errors.Join(err1, err2, err3); err != nil {
			return fail("entry %q is not ivhex:taghex:cipherhex (bad hex)", n)
		}
		if len(iv) < 12 || len(iv) > 64 || len(tag) != 16 {
			return fail("entry %q has a %d-byte IV and a %d-byte tag; want a 12- or 16-byte IV and a 16-byte tag", n, len(iv), len(tag))
		}
		gcm, err := cipher.NewGCMWithNonceSize(block, len(iv))
		if err != nil {
			return fail("entry %q: %v", n, err)
		}
		v, err := gcm.Open(nil, iv, append(ct, tag...), nil)
		if err != nil {
			return fail("entry %q does not decrypt with this key (wrong key, or the entry was altered)", n)
		}
		out = append(out, Entry{Name: n, Value: v})
	}
	return out, nil
}
