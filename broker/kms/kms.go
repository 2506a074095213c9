// Package kms opens brokerd's master key (the KEK) from a keyset file or a KMS key URI, and checks
// a KMS AEAD before brokerd trusts it.
//
// The KEK wraps the keysets stored in the database (envelope encryption, see store/doc.go):
// credentials are still encrypted locally under the data keyset, so the KMS is needed when brokerd
// starts, on re-wrap and on migrate, never per call. A backend is any tink.AEAD; two optional
// interfaces add what a KMS can tell that a keyset cannot: Versioned (which key version made a
// ciphertext, for re-wrap after a KMS-side rotation) and Describer (a name without secrets).
package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/broker/kms/awskms"
	"github.com/credbroker/credbroker/broker/kms/gcpkms"
	"github.com/credbroker/credbroker/broker/kms/internal/kmsuri"
	"github.com/credbroker/credbroker/store"
)

// Versioned is implemented by KMS AEADs whose ciphertexts name the KMS key version that made them
// but carry no Tink key-id prefix (Vault Transit's "vault:vN:..."): store.RewrapIfNeeded cannot
// see a rotation of such a key, so brokerd compares versions itself (NeedsRewrap).
type Versioned interface {
	// KeyVersion asks the KMS which key version new ciphertexts are made under.
	KeyVersion(ctx context.Context) (string, error)
	// CiphertextVersion reads, without the KMS, the key version that made ct.
	CiphertextVersion(ct []byte) (string, error)
}

// Describer is implemented by AEADs that can name themselves for status and logs. The text must
// hold no secret (no token, no credentials in a URL).
type Describer interface{ Describe() string }

// KEK is the master key brokerd runs with.
type KEK struct {
	// AEAD is the master key primitive. For a KMS it records each successful call (LastContact).
	AEAD tink.AEAD
	// Source is what the store records as the database's KEK: "file PATH" or the URI.
	Source string
	// Description names it for status and logs: "file PATH" or the URI; never a secret.
	Description string
	// Path is the keyset file (a file KEK), URI the key URI (a KMS KEK); exactly one is set.
	Path, URI string

	backend tink.AEAD
	contact *atomic.Int64 // unix nanos of the last successful KMS call; nil for a file
}

// IsKMS reports whether the KEK is held by a KMS.
func (k *KEK) IsKMS() bool { return k.URI != "" }

// LastContact is when the KMS last answered a call successfully; zero for a file KEK or before any.
func (k *KEK) LastContact() time.Time {
	if k.contact == nil {
		return time.Time{}
	}
	if n := k.contact.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Versions returns the backend's Versioned, if it has one.
func (k *KEK) Versions() (Versioned, bool) {
	v, ok := k.backend.(Versioned)
	return v, ok
}

// OpenFile loads a master keyset file (store.LoadMasterKeyset's checks apply).
func OpenFile(path string) (*KEK, error) {
	a, err := store.LoadMasterKeyset(path)
	if err != nil {
		return nil, err
	}
	return &KEK{AEAD: a, backend: a, Source: "file " + path, Description: "file " + path, Path: path}, nil
}

// ErrSetup marks an error of Open from before the KMS was asked anything: the key URI, or
// brokerd's own settings for that KMS (its token file, its environment), are wrong, and fixing them
// is the operator's part. Any other error of Open is the KMS's: unreachable, refusing, or failing
// the self-test.
var ErrSetup = errors.New("the KMS key URI or brokerd's settings for it are wrong")

// setupError is a Backend error, marked ErrSetup with its message unchanged.
type setupError struct{ err error }

func (e setupError) Error() string        { return e.err.Error() }
func (e setupError) Unwrap() error        { return e.err }
func (e setupError) Is(target error) bool { return target == ErrSetup }

// Open opens the KMS key named by uri and runs SelfTest on it: a backend that accepts a wrong
// associated data is refused. Errors name the URI, never a credential; those of the URI or the
// local settings, found before any KMS call, are ErrSetup.
func Open(ctx context.Context, uri string) (*KEK, error) {
	backend, err := Backend(ctx, uri)
	if err != nil {
		return nil, setupError{err}
	}
	desc := kmsuri.Redact(uri)
	if d, ok := backend.(Describer); ok {
		desc = d.Describe()
	}
	k := &KEK{Source: uri, Description: desc, URI: uri, backend: backend, contact: new(atomic.Int64)}
	k.AEAD = &contactAEAD{a: backend, last: k.contact}
	if err := SelfTest(k.AEAD); err != nil {
		return nil, fmt.Errorf("master key %s: %w", desc, err)
	}
	return k, nil
}

// backends are the KMSs brokerd opens, by URI scheme: the one list Backend dispatches on and help
// texts name (URIForms), so a scheme added here is never missing from them.
var backends = []backendKind{
	{"hcvault", "hcvault://HOST[:PORT]/MOUNT/keys/NAME", openHCVault},
	{"aws-kms", "aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID", awskms.New},
	{"gcp-kms", "gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K", gcpkms.New},
}

type backendKind struct {
	scheme, form string
	open         func(ctx context.Context, uri string) (tink.AEAD, error)
}

// URIForms returns the form of every KMS key URI brokerd accepts, one per scheme (for help texts
// and errors).
func URIForms() []string {
	forms := make([]string, len(backends))
	for i, b := range backends {
		forms[i] = b.form
	}
	return forms
}

// Backend returns the plain AEAD for uri, by scheme, without the self-test. Open, the self-test and
// everything after it work on any tink.AEAD; Versioned and Describer are optional. AWS KMS and
// Cloud KMS rotate transparently (a ciphertext names no version brokerd can read), so their
// AEADs are not Versioned: `keyset rewrap` re-encrypts under the current version on demand.
func Backend(ctx context.Context, uri string) (tink.AEAD, error) {
	// The scheme is read before any URL parsing: an AWS ARN is no valid URL host.
	scheme, _, ok := strings.Cut(uri, "://")
	if !ok || scheme == "" {
		return nil, fmt.Errorf("--master-key-uri %q is not a key URI (%s)", kmsuri.Redact(uri), strings.Join(URIForms(), ", "))
	}
	var names []string
	for _, b := range backends {
		if strings.EqualFold(scheme, b.scheme) {
			return b.open(ctx, uri)
		}
		names = append(names, b.scheme)
	}
	return nil, fmt.Errorf("--master-key-uri %s: unknown scheme (want %s)", kmsuri.Redact(uri), strings.Join(names, ", "))
}

// openHCVault opens a Vault / OpenBao Transit key URI (transit.go).
func openHCVault(ctx context.Context, uri string) (tink.AEAD, error) {
	u, err := url.Parse(uri)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URI, user info and all
		}
		return nil, fmt.Errorf("--master-key-uri %s: %v", kmsuri.Redact(uri), err)
	}
	return openTransit(ctx, u)
}

// Probe is what SelfTest encrypts: a throwaway plaintext, the associated data it is bound to and
// another associated data that must be refused.
type Probe struct {
	Plaintext, AAD, WrongAAD []byte
}

// DefaultProbe is brokerd's start-up self-test probe. Its associated data differ from every AAD
// the store binds keysets to, so a probe ciphertext can never stand in for a wrapped keyset.
var DefaultProbe = Probe{
	Plaintext: []byte("credbroker/kms-self-test"),
	AAD:       []byte("credbroker/kms-self-test/right"),
	WrongAAD:  []byte("credbroker/kms-self-test/wrong"),
}

// ErrAADIgnored reports a KMS AEAD that decrypts under a wrong associated data. Vault Transit
// does this when the AAD is sent as `context` to a key without derivation (tink-go-hcvault's
// NewClient): the store's slot binding (a data keyset stored where an audit keyset belongs) would
// then be unchecked.
var ErrAADIgnored = errors.New("the KMS decrypted under a wrong associated data: it ignores the associated data (a Vault Transit AEAD sending it as `context` to a non-derived key?); refusing to use it")

// SelfTest checks that a encrypts, decrypts, and refuses a wrong associated data. The order
// matters: the wrong-AAD decrypt runs between two that must succeed, so a KMS that is merely
// unreachable for a moment is not mistaken for one that checks the associated data.
func SelfTest(a tink.AEAD) error { return SelfTestWith(a, DefaultProbe) }

// SelfTestWith is SelfTest with a given probe (tests replaying recorded exchanges use theirs).
func SelfTestWith(a tink.AEAD, p Probe) error {
	ct, err := a.Encrypt(p.Plaintext, p.AAD)
	if err != nil {
		return fmt.Errorf("self-test encrypt: %w", err)
	}
	if pt, err := a.Decrypt(ct, p.WrongAAD); err == nil {
		clear(pt)
		return ErrAADIgnored
	}
	pt, err := a.Decrypt(ct, p.AAD)
	if err != nil {
		return fmt.Errorf("self-test decrypt: %w", err)
	}
	if !bytes.Equal(pt, p.Plaintext) {
		return errors.New("self-test: the KMS decrypted its own ciphertext to something else")
	}
	return nil
}

// NeedsRewrap compares the key version the KMS encrypts under now with the versions that made the
// stored wrapped keysets (store.WrappedCiphertexts). It returns the current version and whether any
// stored wrapping is under another one. A KEK without versions (a file: RewrapIfNeeded reads its
// Tink key ids) never needs it here.
func NeedsRewrap(ctx context.Context, k *KEK, wrapped [][]byte) (current string, stale bool, err error) {
	v, ok := k.Versions()
	if !ok {
		return "", false, nil
	}
	current, err = v.KeyVersion(ctx)
	if err != nil {
		return "", false, fmt.Errorf("ask %s for its key version: %w", k.Description, err)
	}
	k.touch()
	for _, ct := range wrapped {
		got, err := v.CiphertextVersion(ct)
		if err != nil {
			return current, false, fmt.Errorf("stored wrapping: %w", err)
		}
		if got != current {
			stale = true
		}
	}
	return current, stale, nil
}

// StoredVersions lists the distinct key versions that made the stored wrapped keysets; nil when
// the KEK has no versions.
func StoredVersions(k *KEK, wrapped [][]byte) []string {
	v, ok := k.Versions()
	if !ok {
		return nil
	}
	var out []string
	for _, ct := range wrapped {
		got, err := v.CiphertextVersion(ct)
		if err != nil {
			got = "?"
		}
		if !containsString(out, got) {
			out = append(out, got)
		}
	}
	return out
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (k *KEK) touch() {
	if k.contact != nil {
		k.contact.Store(time.Now().UnixNano())
	}
}

// contactAEAD records the time of every successful call to the KMS.
type contactAEAD struct {
	a    tink.AEAD
	last *atomic.Int64
}

func (c *contactAEAD) Encrypt(pt, ad []byte) ([]byte, error) {
	ct, err := c.a.Encrypt(pt, ad)
	if err == nil {
		c.last.Store(time.Now().UnixNano())
	}
	return ct, err
}

func (c *contactAEAD) Decrypt(ct, ad []byte) ([]byte, error) {
	pt, err := c.a.Decrypt(ct, ad)
	if err == nil {
		c.last.Store(time.Now().UnixNano())
	}
	return pt, err
}
