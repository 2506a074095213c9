package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// This file is the one place that reads or writes a cleartext Tink keyset: the master keyset is the
// root of trust and has to exist somewhere in the clear (a 0600 file or a systemd credential).

// ErrKeysetPermissions reports a master keyset file that others can read.
var ErrKeysetPermissions = errors.New("master keyset file is readable by group or others")

// maxKeysetFileSize bounds what we read from a keyset path: a keyset is a few hundred bytes and a
// mistyped path (a device, a log file) must not make us read gigabytes.
const maxKeysetFileSize = 1 << 20

// NewMasterKeyset writes a new AES-256-GCM master keyset as Tink JSON to path, created with mode
// 0600. It refuses to overwrite an existing file: losing a master keyset loses every credential.
func NewMasterKeyset(path string) error {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return fmt.Errorf("generate master keyset: %w", err)
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fmt.Errorf("encode master keyset: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write master keyset: %s already exists; refusing to overwrite a keyset", path)
		}
		return fmt.Errorf("write master keyset: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	return f.Close()
}

// LoadMasterKeyset reads a cleartext Tink JSON keyset from path and returns its AEAD primitive.
// A file readable by group or others is refused: the keyset decrypts every credential.
func LoadMasterKeyset(path string) (tink.AEAD, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open master keyset: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat master keyset %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("master keyset %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %#o; run `chmod 600 %s`", ErrKeysetPermissions, path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeysetFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read master keyset %s: %w", path, err)
	}
	if len(data) > maxKeysetFileSize {
		return nil, fmt.Errorf("master keyset %s is larger than %d bytes; is it the right file?", path, maxKeysetFileSize)
	}
	return ParseMasterKeyset(data)
}

// ParseMasterKeyset parses a cleartext Tink JSON keyset (the format `brokerctl keyset new` writes).
func ParseMasterKeyset(data []byte) (tink.AEAD, error) {
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fmt.Errorf("master keyset is not a valid Tink JSON keyset: %w", err)
	}
	a, err := aead.New(h)
	if err != nil {
		return nil, fmt.Errorf("master keyset is not an AEAD keyset: %w", err)
	}
	return a, nil
}
