package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MasterKeyInfo describes the master key (the KEK) brokerd runs with. It holds no secret.
type MasterKeyInfo struct {
	// Source is "file PATH" or the KMS key URI (without credentials).
	Source string
	// KMS reports whether a KMS holds it.
	KMS bool
	// LastKMSContact is when the KMS last answered successfully (zero for a file).
	LastKMSContact time.Time
	// KeyVersions are the KMS key versions the stored wrapping was made under (Vault Transit's
	// "vault:vN"); none for a file or a KMS without versions.
	KeyVersions []string
}

// MasterKeyChange says what a re-wrap or migrate did.
type MasterKeyChange struct {
	From, To string // sources before and after (equal for a re-wrap)
	// Rewrapped reports whether the stored wrapping changed.
	Rewrapped bool
	// PreviousKeyVersions and KeyVersion: the KMS key versions before, and the one now (a KMS
	// with versions only).
	PreviousKeyVersions []string
	KeyVersion          string
}

// MasterKeyManager is brokerd's master key (broker/daemon/masterkey.go): it knows where the KEK
// comes from, which the broker does not.
type MasterKeyManager interface {
	MasterKeyInfo() MasterKeyInfo
	// RewrapMasterKey re-wraps the stored keysets under the KEK's current key (a new KMS key
	// version, a keyset's new primary).
	RewrapMasterKey(ctx context.Context) (MasterKeyChange, error)
	// MigrateMasterKey moves the database under another KEK: a keyset file path or a KMS URI.
	MigrateMasterKey(ctx context.Context, to string) (MasterKeyChange, error)
}

var errNoMasterKeyManager = errors.New("this brokerd does not manage its master key (no master key manager configured)")

// RewrapMasterKey re-wraps the database's keysets under the master key's current version.
func (b *Broker) RewrapMasterKey(ctx context.Context) (MasterKeyChange, error) {
	callInfo(ctx).Event = "master-key-rewrap"
	if b.masterKey == nil {
		return MasterKeyChange{}, errNoMasterKeyManager
	}
	c, err := b.masterKey.RewrapMasterKey(ctx)
	if err != nil {
		return c, fmt.Errorf("re-wrap under %s: %w", b.masterKey.MasterKeyInfo().Source, err)
	}
	return c, nil
}

// MigrateMasterKey moves the database under the KEK named by to (a file path or a KMS URI).
func (b *Broker) MigrateMasterKey(ctx context.Context, to string) (MasterKeyChange, error) {
	callInfo(ctx).Event = "master-key-migrate"
	if b.masterKey == nil {
		return MasterKeyChange{}, errNoMasterKeyManager
	}
	if to == "" {
		return MasterKeyChange{}, invalid("migrate: name the master key to move to (a keyset file path or a KMS key URI)")
	}
	return b.masterKey.MigrateMasterKey(ctx, to)
}
