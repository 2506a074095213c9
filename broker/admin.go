package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// Limits on admin input, enforced here whatever the client checked.
const (
	MaxCredentialValue = 8 << 10
	MaxLabelLen        = 128
	MaxPageSize        = 1000
	DefaultPageSize    = 100
)

// validCredentialName reports whether name is a credential name: 1 to 64 of [a-z0-9_.-]. It is
// checked by hand, not by a regexp: every audit record checks its credential name, and the regexp
// engine cost more than the rest of building the record.
func validCredentialName(name string) bool {
	if len(name) < 1 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidateCredential checks a credential name and value (never quoting the value).
func ValidateCredential(name string, value []byte) error {
	if !validCredentialName(name) {
		return invalid("credential name must match [a-z0-9_.-]{1,64}")
	}
	if len(value) == 0 {
		return invalid("credential value must not be empty")
	}
	if len(value) > MaxCredentialValue {
		return invalid("credential value is %d bytes; the limit is %d", len(value), MaxCredentialValue)
	}
	if !upstream.HeaderSafe(value) {
		// Keys travel in HTTP headers; such a value would be stored and then refused on every call.
		return invalid("credential value must be visible ASCII on one line (no spaces, tabs, line breaks or control characters): it is sent in an HTTP header")
	}
	return nil
}

// PutCredential stores a new credential (version 1).
func (b *Broker) PutCredential(ctx context.Context, name string, value []byte) (store.Credential, error) {
	return b.PutCredentialAs(ctx, name, value, Caller{})
}

// PutCredentialAs stores a new credential (version 1), recording caller as its creator.
func (b *Broker) PutCredentialAs(ctx context.Context, name string, value []byte, caller Caller) (store.Credential, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "put"
	if err := ValidateCredential(name, value); err != nil {
		return store.Credential{}, err
	}
	c, err := b.store.CreateCredential(name, value, store.VersionMeta{At: b.now(), ByUID: uidOf(caller), How: store.HowManual})
	ci.CredentialVersion = c.Version
	if err == nil {
		b.credentialEvent(name, "put", c.Version, uidOf(caller), "")
		b.log.Info("credential stored", "credential", name, "version", c.Version)
	}
	return c, err
}

// RotateCredential stores a new version of an existing credential. Calls that start after it
// returns load the new version: LoadCredential reads the committed current version each call.
// See Rotate for verified rotation and the creator's uid.
func (b *Broker) RotateCredential(ctx context.Context, name string, value []byte) (store.Credential, error) {
	return b.Rotate(ctx, name, value, RotateOptions{})
}

// ListCredentials returns credential metadata.
func (b *Broker) ListCredentials() ([]store.Credential, error) { return b.store.ListCredentials() }

// DeleteCredential deletes a credential and its versions.
func (b *Broker) DeleteCredential(ctx context.Context, name string) error {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "delete"
	if !validCredentialName(name) {
		return invalid("credential name must match [a-z0-9_.-]{1,64}")
	}
	err := b.store.DeleteCredential(name)
	if err == nil {
		b.log.Info("credential deleted", "credential", name)
	}
	return err
}

// MintRequest describes a token to mint.
type MintRequest struct {
	Tools   []string
	TTL     time.Duration
	MaxUses uint64
	BindUID *uint32
	Label   string
	// RateLimit calls per RatePeriod; 0 = unlimited.
	RateLimit  uint32
	RatePeriod time.Duration
	// BudgetCredits per BudgetPeriod ("day" or "month"); 0 = no budget.
	BudgetCredits uint64
	BudgetPeriod  string
	// SharedCache opts the token into the result cache shared by all shared-cache tokens.
	SharedCache bool
	// Workload names the registration a token fetched by attestation came from; such a token
	// is process-bound (revoked when its process exits, and at brokerd's start).
	Workload string
	// BindProcess makes the token process-bound to the caller (MintBoundToProcess).
	BindProcess bool
}

// MintToken validates r and creates a token. It returns the token string (shown once) and its
// stored record.
func (b *Broker) MintToken(ctx context.Context, r MintRequest, caller Caller) (string, store.Token, error) {
	ci := callInfo(ctx)
	if ci.Event == "" {
		ci.Event = "mint" // FetchToken names its own
	}
	scoped, err := b.checkMint(r)
	if err != nil {
		return "", store.Token{}, err
	}
	now := b.now().UTC()
	for range 3 { // an id collision (2^-64 per pair) is retried, not reported
		tok, id, hash, err := token.New()
		if err != nil {
			return "", store.Token{}, err
		}
		rec := store.Token{
			ID: id, SecretHash: hash[:], Tools: scoped, CreatedAt: now, ExpiresAt: now.Add(r.TTL),
			MaxUses: r.MaxUses, BindUID: r.BindUID, Label: r.Label, MintedByUID: caller.UID,
			RateLimit: r.RateLimit, RatePeriod: r.RatePeriod,
			BudgetCredits: r.BudgetCredits, BudgetPeriod: r.BudgetPeriod, SharedCache: r.SharedCache,
			Workload: r.Workload, ProcessBound: r.Workload != "" || r.BindProcess,
		}
		err = b.putToken(ctx, ci, rec)
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return "", store.Token{}, err
		}
		b.log.Info("token minted", "token_id", id, "tools", scoped, "expires_at", rec.ExpiresAt, "max_uses", r.MaxUses, "label", r.Label)
		return tok, rec, nil
	}
	return "", store.Token{}, errors.New("could not draw an unused token id")
}

// checkMint validates r as MintToken would and returns its tools without duplicates.
func (b *Broker) checkMint(r MintRequest) ([]string, error) {
	if len(r.Tools) == 0 {
		return nil, invalid("at least one tool is required; known tools: %s", strings.Join(ToolNames(), ", "))
	}
	var scoped []string
	for _, name := range r.Tools {
		if _, ok := LookupTool(name); !ok {
			return nil, invalid("unknown tool %s; known tools: %s", quoteInput(name), strings.Join(ToolNames(), ", "))
		}
		if !slices.Contains(scoped, name) {
			scoped = append(scoped, name)
		}
	}
	switch {
	case r.TTL <= 0:
		return nil, invalid("ttl must be greater than zero")
	case r.TTL > b.maxTTL:
		return nil, invalid("ttl %s exceeds the maximum %s (brokerd --max-ttl)", r.TTL, b.maxTTL)
	}
	if err := validateLabel(r.Label); err != nil {
		return nil, err
	}
	switch {
	case r.RateLimit == 0 && r.RatePeriod != 0:
		return nil, invalid("rate_period needs rate_limit")
	case r.RateLimit > 0 && (r.RatePeriod < time.Second || r.RatePeriod > 24*time.Hour):
		return nil, invalid("rate period must be between 1s and 24h, e.g. 10/m")
	case r.BudgetCredits > 0 && r.BudgetPeriod != "day" && r.BudgetPeriod != "month":
		return nil, invalid("budget period must be day or month, e.g. 100/d")
	case r.BudgetCredits == 0 && r.BudgetPeriod != "":
		return nil, invalid("budget period needs budget credits")
	}
	return scoped, nil
}

func validateTokenID(id string) error {
	if !token.ValidID(id) {
		return invalid("token id must be 16 lowercase hex characters (see `brokerctl token list`)")
	}
	return nil
}

func validateLabel(l string) error {
	if !utf8.ValidString(l) {
		return invalid("label must be valid UTF-8")
	}
	if n := utf8.RuneCountInString(l); n > MaxLabelLen {
		return invalid("label is %d characters; the limit is %d", n, MaxLabelLen)
	}
	if strings.IndexFunc(l, unicode.IsControl) >= 0 {
		return invalid("label must not contain control characters")
	}
	return nil
}

// ListTokens returns one page of tokens after pageToken (an id) and the next page token.
func (b *Broker) ListTokens(pageSize int, pageToken string, includeExpired bool) ([]store.Token, string, error) {
	switch {
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize < 0 || pageSize > MaxPageSize:
		return nil, "", invalid("page_size must be between 1 and %d", MaxPageSize)
	}
	if pageToken != "" && !token.ValidID(pageToken) {
		return nil, "", invalid("page_token is not one this server returned")
	}
	now := b.now()
	var keep func(*store.Token) bool
	if !includeExpired {
		keep = func(t *store.Token) bool { return t.Live(now) }
	}
	return b.store.ListTokens(pageToken, pageSize, keep)
}

// RevokeToken revokes a token by id; ErrNotFound for an unknown id.
func (b *Broker) RevokeToken(ctx context.Context, id string) (store.Token, error) {
	ci := callInfo(ctx)
	ci.Event = "revoke"
	if err := validateTokenID(id); err != nil {
		return store.Token{}, err
	}
	ci.TokenID = id
	t, err := b.store.RevokeToken(id, b.now())
	if err != nil {
		return store.Token{}, err
	}
	b.updateCachedToken(t)
	// A process-bound token's watch ends with it: its pidfd closes and its place (and its uid's
	// share of them) is free for the next FetchToken at once, not when the token would expire.
	b.endWatch(id)
	b.log.Info("token revoked", "token_id", id)
	return t, nil
}

// Status is a snapshot of the daemon's state.
type Status struct {
	Version       string
	StartedAt     time.Time
	Uptime        time.Duration
	Credentials   int
	LiveTokens    int
	SchemaVersion int
	Tools         []string // "tool=credential"
	RotationInfo           // warnings, key ids, rotation policies (rotation.go)
	// Limited are the credentials with spending limits: limits set once are easy to forget, and a
	// call that waits for a slot looks like a slow upstream unless status shows them.
	Limited []store.Credential
	// Workloads are the registrations that may fetch tokens by attestation.
	Workloads []store.Workload
	// MasterKey is the KEK's source and last KMS contact (zero without a manager).
	MasterKey MasterKeyInfo
}

// Status counts credentials and live tokens.
func (b *Broker) Status() (Status, error) {
	now := b.now()
	n, err := b.store.CountCredentials()
	if err != nil {
		return Status{}, err
	}
	live := 0
	var overshoots []string
	if err := b.store.ForEachToken(func(t *store.Token) error {
		if t.Live(now) {
			live++
			if w := overshootWarning(t, now); w != "" {
				overshoots = append(overshoots, w)
			}
		}
		return nil
	}); err != nil {
		return Status{}, err
	}
	var ts []string
	for _, t := range tools {
		ts = append(ts, fmt.Sprintf("%s=%s", t.Name, t.Credential))
	}
	ri, err := b.rotationInfo(now)
	if err != nil {
		return Status{}, err
	}
	creds, err := b.store.ListCredentials()
	if err != nil {
		return Status{}, err
	}
	stored := make([]string, len(creds))
	for i, c := range creds {
		stored[i] = c.Name
	}
	ri.Warnings = append(ri.Warnings, credentialWarnings(stored)...)
	ri.Warnings = append(ri.Warnings, overshoots...)
	if w := b.diskWarning(); w != "" {
		ri.Warnings = append(ri.Warnings, w)
	}
	if err := b.store.AuditHealthy(); err != nil {
		ri.Warnings = append(ri.Warnings, auditWarning(err))
	}
	var limited []store.Credential
	for _, c := range creds {
		if c.Limits != nil && (c.Limits.RateLimit > 0 || c.Limits.MonthlyCredits > 0) {
			limited = append(limited, c)
		}
	}
	workloads, err := b.store.ListWorkloads()
	if err != nil {
		return Status{}, err
	}
	var mk MasterKeyInfo
	if b.masterKey != nil {
		mk = b.masterKey.MasterKeyInfo()
	}
	return Status{
		MasterKey: mk,
		Workloads: workloads,
		Version:   b.version, StartedAt: b.started, Uptime: now.Sub(b.started),
		Credentials: n, LiveTokens: live, SchemaVersion: store.SchemaVersion, Tools: ts,
		RotationInfo: ri, Limited: limited,
	}, nil
}

// TokenCount returns how many tokens are stored (live or not), without decoding them.
func (b *Broker) TokenCount() (int, error) { return b.store.CountTokens() }
