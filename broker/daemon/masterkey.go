package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/store"
)

// masterKey is brokerd's KEK: a keyset file or a KMS key (broker/kms). It opens it at start,
// re-wraps the database when the KMS reports a newer key version (start, SIGHUP, `brokerctl keyset
// rewrap`) and moves the database to another KEK (`brokerctl keyset migrate`). The KMS is needed
// for those only: serving uses the data keyset held in memory.
type masterKey struct {
	mu  sync.Mutex // serialises reload, re-wrap and migrate
	cur atomic.Pointer[kms.KEK]
	st  *store.Store
	log *slog.Logger
}

var _ broker.MasterKeyManager = (*masterKey)(nil)

// openMasterKey opens the KEK named by exactly one of path and uri. A KMS is self-tested
// (kms.Open): an AEAD that accepts a wrong associated data is refused.
func openMasterKey(ctx context.Context, path, uri string) (*kms.KEK, error) {
	switch {
	case path != "" && uri != "":
		return nil, errors.New("give exactly one of --master-keyset and --master-key-uri (the master key is a keyset file or a KMS key, not both)")
	case path == "" && uri == "":
		return nil, errors.New("--master-keyset or --master-key-uri is required")
	case uri != "":
		k, err := kms.Open(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("the KMS holding the master key is needed at start and did not pass: %w", err)
		}
		return k, nil
	default:
		return kms.OpenFile(path)
	}
}

// sourceFlag names the brokerd flag for a recorded KEK source (store.KEKSource).
func sourceFlag(src string) string {
	switch {
	case src == store.KEKSourceFile:
		return "--master-keyset (the keyset file it was made with)"
	case strings.HasPrefix(src, "file "):
		return "--master-keyset " + strings.TrimPrefix(src, "file ")
	default:
		return "--master-key-uri " + src
	}
}

// wrongKEKError explains a KEK that did not open the database, naming the KEK the database
// records it is under.
func wrongKEKError(err error, db string, k *kms.KEK) error {
	src, ierr := store.InspectKEKSource(db)
	if ierr == nil && strings.HasPrefix(src, "file ") && src != k.Source {
		// Another keyset file than the one recorded (a `keyset migrate` moved it there).
		return fmt.Errorf("%w: %s is wrapped under the keyset %s, not %s: start brokerd with %s; nothing was changed", err, db, strings.TrimPrefix(src, "file "), k.Description, sourceFlag(src))
	}
	if ierr != nil || sameSource(src, k.Source) {
		if k.IsKMS() {
			return fmt.Errorf("%w: %s does not open with %s (the KMS refused to decrypt: another key, or a token without decrypt on it?); nothing was changed", err, db, k.Description)
		}
		return fmt.Errorf("%w: %s was not made with the master keyset %s; nothing was changed", err, db, k.Path)
	}
	return fmt.Errorf("%w: %s is wrapped under %s, not %s: start brokerd with %s; nothing was changed", err, db, store.DescribeKEKSource(src), k.Description, sourceFlag(src))
}

// sameSource compares two KEK sources; all keyset files are one kind (a file's path may move).
func sameSource(a, b string) bool {
	isFile := func(s string) bool { return s == store.KEKSourceFile || strings.HasPrefix(s, "file ") }
	if isFile(a) || isFile(b) {
		return isFile(a) && isFile(b)
	}
	return a == b
}

// afterOpen runs once the store opened with k: it records k as the database's KEK source and
// re-wraps under k's current key if needed (a keyset's new primary, a KMS key's new version).
func (m *masterKey) afterOpen(ctx context.Context, k *kms.KEK) (rewrapped bool, err error) {
	m.cur.Store(k)
	if !k.IsKMS() {
		before, rewrapped, err := m.st.RewrapIfNeeded(k.AEAD)
		if err != nil {
			return false, err
		}
		if rewrapped {
			m.log.Info("database re-wrapped under the master keyset's primary key; the old master key can be pruned", "previous_master_key_ids", before)
		}
		if m.st.KEKSource() != k.Source {
			// The keyset opened the database, so it is what the database is under; record it
			// (a new database, or one whose keyset file moved) for later error messages.
			if err := m.st.RewrapUnder(k.AEAD, k.Source); err != nil {
				return rewrapped, err
			}
		}
		return rewrapped, nil
	}
	c, err := m.rewrapIfStale(ctx, k, m.st.KEKSource() != k.Source)
	return c.Rewrapped, err
}

// rewrapIfStale re-wraps under k when the KMS encrypts under a newer key version than the stored
// wrapping was made with (Transit's ciphertexts carry no Tink key id, so store.RewrapIfNeeded
// cannot see it), or when force is set.
func (m *masterKey) rewrapIfStale(ctx context.Context, k *kms.KEK, force bool) (broker.MasterKeyChange, error) {
	c := broker.MasterKeyChange{From: k.Description, To: k.Description}
	wrapped, err := m.st.WrappedCiphertexts()
	if err != nil {
		return c, err
	}
	c.PreviousKeyVersions = kms.StoredVersions(k, wrapped)
	cur, stale, err := kms.NeedsRewrap(ctx, k, wrapped)
	if err != nil {
		return c, fmt.Errorf("%w: %v", broker.ErrKMSUnavailable, err)
	}
	c.KeyVersion = cur
	if !stale && !force {
		return c, nil
	}
	if err := m.st.RewrapUnder(k.AEAD, k.Source); err != nil {
		return c, kmsErr(err)
	}
	c.Rewrapped = true
	m.log.Info("database re-wrapped under the KMS key's current version", "kek", k.Description,
		"previous_key_versions", c.PreviousKeyVersions, "key_version", cur)
	return c, nil
}

// kmsErr marks a failed re-wrap as the KMS's doing (what it is unless the database failed, which
// keeps its own mapping).
func kmsErr(err error) error {
	// ErrOutcomeUnknown included: the re-wrap may have landed, which "KMS unavailable, nothing
	// was changed" would deny.
	if errors.Is(err, store.ErrCorrupt) || errors.Is(err, store.ErrTampered) || errors.Is(err, store.ErrSyncFailed) || errors.Is(err, store.ErrOutcomeUnknown) {
		return err
	}
	return fmt.Errorf("%w: %v", broker.ErrKMSUnavailable, err)
}

// MasterKeyInfo implements broker.MasterKeyManager.
func (m *masterKey) MasterKeyInfo() broker.MasterKeyInfo {
	k := m.cur.Load()
	if k == nil {
		return broker.MasterKeyInfo{}
	}
	info := broker.MasterKeyInfo{Source: k.Description, KMS: k.IsKMS(), LastKMSContact: k.LastContact()}
	if wrapped, err := m.st.WrappedCiphertexts(); err == nil {
		info.KeyVersions = kms.StoredVersions(k, wrapped)
	}
	return info
}

// RewrapMasterKey implements broker.MasterKeyManager: a forced re-wrap under the current KEK (for a
// KMS, its current key version; for a file, its primary).
func (m *masterKey) RewrapMasterKey(ctx context.Context) (broker.MasterKeyChange, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := m.cur.Load()
	if !k.IsKMS() {
		before, rewrapped, err := m.st.RewrapIfNeeded(k.AEAD)
		return broker.MasterKeyChange{From: k.Description, To: k.Description, Rewrapped: rewrapped,
			PreviousKeyVersions: idsToStrings(before)}, err
	}
	return m.rewrapIfStale(ctx, k, true)
}

func idsToStrings(ids []uint32) []string {
	var out []string
	for _, id := range ids {
		out = append(out, fmt.Sprint(id))
	}
	return out
}

// MigrateMasterKey implements broker.MasterKeyManager. The target is opened (and, for a KMS,
// self-tested) with brokerd's own environment and files; store.RewrapUnder moves and verifies in
// one transaction, then the committed database is checked to open with the target alone.
func (m *masterKey) MigrateMasterKey(ctx context.Context, to string) (broker.MasterKeyChange, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	from := m.cur.Load()
	c := broker.MasterKeyChange{From: from.Description}
	var (
		next *kms.KEK
		err  error
	)
	if strings.Contains(to, "://") {
		// Opened once: a bad URI or local setting (kms.ErrSetup) is the caller's to fix, anything
		// else the KMS's.
		if next, err = kms.Open(ctx, to); errors.Is(err, kms.ErrSetup) {
			return c, fmt.Errorf("%w: %v", broker.ErrInvalidArgument, err)
		} else if err != nil {
			return c, fmt.Errorf("%w: %v", broker.ErrKMSUnavailable, err)
		}
	} else {
		if !filepath.IsAbs(to) {
			return c, fmt.Errorf("%w: migrate --to %q: give an absolute keyset path (brokerd reads it, from its own directory)", broker.ErrInvalidArgument, to)
		}
		if next, err = kms.OpenFile(to); err != nil {
			return c, fmt.Errorf("%w: %v", broker.ErrInvalidArgument, err)
		}
	}
	c.To = next.Description
	if err := m.st.RewrapUnder(next.AEAD, next.Source); err != nil {
		return c, kmsErr(err)
	}
	u, err := m.st.Keys()
	if err != nil {
		return c, err
	}
	if !u.OpensWith(next.AEAD) {
		return c, fmt.Errorf("%w: migrate: the database does not open with %s after the move; it was re-wrapped in one transaction, so run the migrate again", broker.ErrKMSUnavailable, next.Description)
	}
	m.cur.Store(next)
	if next.IsKMS() {
		if wrapped, err := m.st.WrappedCiphertexts(); err == nil {
			if vs := kms.StoredVersions(next, wrapped); len(vs) > 0 {
				c.KeyVersion = vs[0]
			}
		}
	}
	c.Rewrapped = true
	m.log.Warn("master key migrated: restart brokerd with the new flag from now on", "from", from.Description, "to", next.Description,
		"start_with", sourceFlag(next.Source))
	return c, nil
}

// reload re-opens the KEK from where it came from (SIGHUP): the keyset file is read again, or the
// KMS is opened again (a new token in its file is picked up) and self-tested. It is accepted only
// if it opens the database; then the database is re-wrapped if the KEK's current key is newer
// (a keyset's new primary, a KMS key's new version). Anything else leaves everything as it was.
func (m *masterKey) reload(ctx context.Context) (rewrapped bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.cur.Load()
	next, err := openMasterKey(ctx, cur.Path, cur.URI)
	if err != nil {
		return false, err
	}
	u, err := m.st.Keys()
	if err != nil {
		return false, err
	}
	if !u.OpensWith(next.AEAD) {
		return false, store.ErrWrongMasterKey
	}
	if !next.IsKMS() {
		_, rewrapped, err = m.st.RewrapIfNeeded(next.AEAD)
		if err == nil {
			m.cur.Store(next)
		}
		return rewrapped, err
	}
	c, err := m.rewrapIfStale(ctx, next, false)
	if err != nil {
		return false, err
	}
	if !c.Rewrapped {
		// The store keeps using the KEK it was given; hand it the new client (a new token).
		if _, _, err := m.st.RewrapIfNeeded(next.AEAD); err != nil {
			return false, err
		}
	}
	m.cur.Store(next)
	return c.Rewrapped, nil
}
