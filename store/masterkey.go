package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// This file is the one place that reads or writes a cleartext Tink keyset: the master keyset is the
// root of trust and has to exist somewhere in the clear (a 0600 file or a systemd credential).

// ErrKeysetPermissions reports a master keyset file that others can read: ErrSecretFileMode, under
// the name callers have checked for since before other secret files shared the check.
var ErrKeysetPermissions = ErrSecretFileMode

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
	return writeKeysetFile(path, h)
}

// writeKeysetFile writes h as cleartext Tink JSON to a new file at path, mode 0600; it never
// overwrites. The file appears at path whole or not at all: a kill or a crash during the write
// must not leave a truncated keyset there, which brokerd would refuse to load and a re-run would
// refuse to overwrite (createKeysetFile, per platform).
func writeKeysetFile(path string, h *keyset.Handle) error {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return fmt.Errorf("encode master keyset: %w", err)
	}
	if err := MkdirParent(path); err != nil {
		return fmt.Errorf("write master keyset: %w", err)
	}
	if err := createKeysetFile(path, buf.Bytes()); err != nil {
		return err
	}
	// The file's name too: once brokerd re-wraps the database under a rotated keyset's new
	// primary, this file is the only thing that opens it, and a power loss must not take the
	// name away with the key (as for the audit journal's create).
	if err := syncDir(path); err != nil {
		return fmt.Errorf("write master keyset %s: sync its directory: %w", path, err)
	}
	return nil
}

// errKeysetExists is the refusal to overwrite an existing keyset file.
func errKeysetExists(path string) error {
	return fmt.Errorf("write master keyset: %s already exists; refusing to overwrite a keyset", path)
}

// createKeysetFileNamed gives path the contents data, mode 0600, through a named temporary file in
// path's directory: written and fsynced under a name of its own (.NAME.tmp-RANDOM, created 0600
// with O_EXCL), then hard-linked to path (which fails if path exists: never an overwrite) and
// removed. A crash before the link leaves no file at path, only the temporary one: it holds a
// keyset nothing ever used and can be deleted (README, keyset new). The caller fsyncs the
// directory.
func createKeysetFileNamed(path string, data []byte) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return errKeysetExists(path)
		}
		return fmt.Errorf("write master keyset %s: %w", path, err)
	}
	return nil
}

// LoadMasterKeyset reads a cleartext Tink JSON keyset from path and returns its AEAD primitive.
// A file readable by group or others is refused: the keyset decrypts every credential.
func LoadMasterKeyset(path string) (tink.AEAD, error) {
	data, err := readKeysetFile(path)
	if err != nil {
		return nil, err
	}
	return ParseMasterKeyset(data)
}

// readKeysetFile reads a keyset file, refusing anything but a small regular file that only its
// owner can read, owned by this process's uid or root (ReadSecretFile).
func readKeysetFile(path string) ([]byte, error) {
	return ReadSecretFile(path, "master keyset", maxKeysetFileSize)
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

// RotateMasterKeyset reads the master keyset at in, adds a new AES-256-GCM key, makes it the
// primary and writes the result to a new file out (mode 0600, never overwritten). The old keys stay
// in out, so out still decrypts a database wrapped under in; brokerd re-wraps its data keyset under
// the new primary when it loads out (SIGHUP or restart). It returns the new primary key's id.
func RotateMasterKeyset(in, out string) (uint32, error) {
	data, err := readKeysetFile(in)
	if err != nil {
		return 0, err
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return 0, fmt.Errorf("master keyset %s is not a valid Tink JSON keyset: %w", in, err)
	}
	if _, err := aead.New(h); err != nil {
		return 0, fmt.Errorf("master keyset %s is not an AEAD keyset: %w", in, err)
	}
	m := keyset.NewManagerFromHandle(h)
	id, err := m.Add(aead.AES256GCMKeyTemplate())
	if err != nil {
		return 0, fmt.Errorf("add key: %w", err)
	}
	if err := m.SetPrimary(id); err != nil {
		return 0, fmt.Errorf("set primary: %w", err)
	}
	rotated, err := m.Handle()
	if err != nil {
		return 0, fmt.Errorf("rotated keyset: %w", err)
	}
	if err := writeKeysetFile(out, rotated); err != nil {
		return 0, err
	}
	return id, nil
}

// PruneMasterKeyset writes to a new file out (mode 0600, never overwritten) the master keyset at
// in without its non-primary keys. inUse are the master key ids a database still needs (KeyUsage.
// MasterKeyIDs); while any of them is a key prune would remove, or one the keyset does not hold,
// it refuses with ErrKeyInUse and writes nothing. check, if set, must accept the pruned keyset's
// primitive (e.g. KeyUsage.OpensWith) before out is written. It returns the removed key ids.
func PruneMasterKeyset(in, out string, inUse []uint32, check func(tink.AEAD) error) ([]uint32, error) {
	data, err := readKeysetFile(in)
	if err != nil {
		return nil, err
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(data)))
	if err != nil {
		return nil, fmt.Errorf("master keyset %s is not a valid Tink JSON keyset: %w", in, err)
	}
	info := h.KeysetInfo()
	primary := info.GetPrimaryKeyId()
	held := map[uint32]bool{}
	for _, ki := range info.GetKeyInfo() {
		held[ki.GetKeyId()] = true
	}
	if len(inUse) == 0 {
		return nil, fmt.Errorf("%w: cannot tell which master keys the database needs", ErrKeyInUse)
	}
	for _, id := range inUse {
		switch {
		case !held[id]:
			return nil, fmt.Errorf("%w: the database is wrapped under master key %d, which %s does not hold; is it the keyset brokerd uses?", ErrKeyInUse, id, in)
		case id != primary:
			return nil, fmt.Errorf("%w: master key %d still wraps the database and is not the primary (%d); start (or reload) brokerd with %s so it re-wraps under the primary, then prune", ErrKeyInUse, id, primary, in)
		}
	}
	m := keyset.NewManagerFromHandle(h)
	var removed []uint32
	for _, ki := range info.GetKeyInfo() {
		if id := ki.GetKeyId(); id != primary {
			if err := m.Delete(id); err != nil {
				return nil, fmt.Errorf("delete key %d: %w", id, err)
			}
			removed = append(removed, id)
		}
	}
	if len(removed) == 0 {
		return nil, fmt.Errorf("nothing to prune: %s holds only its primary key %d", in, primary)
	}
	pruned, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("pruned keyset: %w", err)
	}
	if check != nil {
		a, err := aead.New(pruned)
		if err != nil {
			return nil, fmt.Errorf("pruned keyset: %w", err)
		}
		if err := check(a); err != nil {
			return nil, err
		}
	}
	if err := writeKeysetFile(out, pruned); err != nil {
		return nil, err
	}
	return removed, nil
}
