package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/token"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// Caller is the local process on the other end of the socket, as the kernel reported it.
type Caller struct {
	UID, GID uint32
	PID      int32
	Known    bool // false when the transport could not tell (tests over bufconn)
	// PIDFD, Exe and Comm name the calling program; see peercred.AuthInfo.
	PIDFD     bool
	Exe, Comm string
	// StartTime is the process's start time when the pidfd pinned it (peercred.AuthInfo);
	// attestation uses it to find the same process again.
	StartTime uint64
	// PidfdInode names it too, on Linux 6.9+ (peercred.AuthInfo.PidfdInode).
	PidfdInode uint64
	// Groups are the supplementary groups the kernel recorded at connect (SO_PEERGROUPS); nil
	// when unknown (an old kernel, loopback TCP), and attestation then reads /proc instead.
	Groups []uint32
}

// Config wires a Broker.
type Config struct {
	Store    *store.Store
	Upstream *upstream.Client
	Logger   *slog.Logger
	// MaxTTL is the longest token lifetime MintToken accepts. Default 24h.
	MaxTTL time.Duration
	// Version is reported by Status.
	Version string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// GraceWindow is how long after a rotation a 401/403 on the current version is retried once
	// with the previous version (rotation.go). 0 means DefaultGraceWindow; negative disables it.
	GraceWindow time.Duration
	// Clock drives the rotation scheduler (scheduler.go); default the real clock.
	Clock Clock
	// Scheduler tunes the rotation scheduler.
	Scheduler SchedulerConfig
	// Economics tunes the result cache (economics.go).
	Economics EconomicsConfig
	// TokenCacheSize bounds how many tokens' records are kept in memory (tokens.go). 0 means
	// DefaultTokenCacheSize.
	TokenCacheSize int
	// MasterKey manages the master key for Status and the re-wrap and migrate calls; nil in tests
	// that need neither.
	MasterKey MasterKeyManager
}

// Broker checks tokens and performs tool calls with credentials it never hands out.
type Broker struct {
	store    *store.Store
	upstream *upstream.Client
	log      *slog.Logger
	maxTTL   time.Duration
	version  string
	now      func() time.Time
	started  time.Time

	// tokens caches token state by id so the hot path (a token without a use limit) costs no
	// bbolt access after the first call. Only this process writes the database, so the cache is
	// kept coherent by updating it in RevokeToken; tokenGen counts those updates so a load that
	// raced one is not cached. At most tokenCap entries, except tokens whose rate limit is
	// still recovering (evicting those would forget the limit); lastUsed keeps the last use of
	// evicted tokens (tokens.go).
	mu       sync.RWMutex
	tokens   map[string]*tokenState
	tokenGen uint64
	tokenCap int
	lastUsed map[lastUseKey]lastUse
	// lastUsedSweep is the size of lastUsed at which expired entries are next swept.
	lastUsedSweep int

	watch workloadWatch // process-bound tokens' pidfds (workload.go)

	rot     *rotation  // versions, verification, grace fallback, scheduler (rotation.go)
	econ    *economics // credential limiters, result cache, budgets (economics.go)
	flights *flights   // searches' upstream calls, which may outlive their callers (settle.go)
	workers *workers   // the goroutines those calls run on (settle.go)

	// ret is audit retention's state between passes (audit.go).
	ret auditRetention

	refused refusalLog // coalesced audit of refusals (refusals.go)

	masterKey MasterKeyManager // masterkey.go

	// decode is the searches' upstream.Request.Decode: decodeAnswer (a seam for tests that need
	// the computation to fail in ways the code cannot yet, such as a panic).
	decode func(body []byte) (any, error)
}

// New builds a Broker.
func New(cfg Config) (*Broker, error) {
	if cfg.Store == nil || cfg.Upstream == nil {
		return nil, errors.New("broker: store and upstream are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TokenCacheSize <= 0 {
		cfg.TokenCacheSize = DefaultTokenCacheSize
	}
	b := &Broker{
		store: cfg.Store, upstream: cfg.Upstream, log: cfg.Logger, maxTTL: cfg.MaxTTL,
		version: cfg.Version, now: cfg.Now, started: cfg.Now(), tokens: make(map[string]*tokenState),
		tokenCap: cfg.TokenCacheSize, lastUsed: make(map[lastUseKey]lastUse), lastUsedSweep: cfg.TokenCacheSize,
		rot: newRotation(cfg), econ: newEconomics(cfg), flights: newFlights(), masterKey: cfg.MasterKey,
		decode: decodeAnswer,
	}
	b.rot.sched = newScheduler(b, cfg.Clock, cfg.Scheduler)
	b.watch.clock = b.rot.sched.clock
	b.workers = newWorkers(searchWorkers, func(v any) { b.panicked(v) })
	b.econ.cache.SetSpawn(b.workers.run)
	b.econ.cache.SetRecover(b.panicked)
	return b, nil
}

// maxQuoted is how much of a caller's input an error message repeats.
const maxQuoted = 64

// quoteInput quotes s for an error message, cut to maxQuoted bytes: a refusal should say what
// was refused, not send back (or log) whatever a caller chose to send.
func quoteInput(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(strings.ToValidUTF8(s[:maxQuoted], "")), len(s))
}

func unauthenticated(reason, format string, args ...any) error {
	return refusal(reason, 0, fmt.Errorf("%w: %s", ErrUnauthenticated, fmt.Sprintf(format, args...)))
}

// Authenticate checks a bearer token presented by caller: shape, secret, revocation, expiry and
// uid binding. It does not check tool scope or count a use.
func (b *Broker) Authenticate(ctx context.Context, raw string, caller Caller) (*store.Token, error) {
	st, err := b.authenticate(ctx, raw, caller)
	if err != nil {
		return nil, err
	}
	return st.record(), nil
}

func (b *Broker) authenticate(ctx context.Context, raw string, caller Caller) (*tokenState, error) {
	ci := callInfo(ctx)
	if raw == "" {
		ci.Event = RefusedNoToken
		return nil, unauthenticated(ReasonTokenMissing, "no token: send metadata \"authorization: Bearer <token>\" with a token from `brokerctl token mint`")
	}
	p, err := token.Parse(raw)
	if err != nil {
		ci.Event = RefusedInvalidToken
		return nil, unauthenticated(ReasonTokenInvalid, "invalid token")
	}
	ci.TokenID = p.ID
	st, err := b.lookupToken(p.ID)
	if errors.Is(err, store.ErrNotFound) {
		ci.Event = RefusedInvalidToken
		return nil, unauthenticated(ReasonTokenInvalid, "invalid token")
	}
	if err != nil {
		return nil, fmt.Errorf("token %s: %w", p.ID, err)
	}
	t := st.record()
	if !p.Verify(t.SecretHash) {
		ci.Event = RefusedInvalidToken
		return nil, unauthenticated(ReasonTokenInvalid, "invalid token")
	}
	ci.TokenLabel, ci.Verified = t.Label, true
	if t.Revoked {
		ci.Event = RefusedRevokedToken
		return nil, unauthenticated(ReasonTokenRevoked, "token %s was revoked; ask the operator for a new one", t.ID)
	}
	if b.watch.hasExited(t.ID) { // its revocation is still being written
		ci.Event = RefusedRevokedToken
		return nil, unauthenticated(ReasonTokenRevoked, "token %s was revoked: the process it was bound to exited, or brokerd restarted and can no longer watch it (its revocation is being written); fetch a new one, or for a brokerctl exec token run the command again", t.ID)
	}
	if now := b.now(); !now.Before(t.ExpiresAt) {
		ci.Event = RefusedExpiredToken
		return nil, unauthenticated(ReasonTokenExpired, "token %s expired at %s; ask the operator to mint a new one", t.ID, t.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if t.BindUID != nil && (!caller.Known || caller.UID != *t.BindUID) {
		ci.Event = RefusedBoundMisuse
		b.log.Warn("bound token presented by another uid", "token_id", t.ID, "bound_uid", *t.BindUID, "peer_uid", caller.UID, "peer_pid", caller.PID)
		return nil, unauthenticated(ReasonTokenBoundToOtherUID, "token %s is bound to another uid", t.ID)
	}
	return st, nil
}

// What a call waited for before stillLive checked its token again, as its refusals say it.
const (
	waitedForSlot  = "for a slot of its credential's rate limit; it was not sent"
	waitedForGate  = "out the upstream's 429 pause of its credential; it was not sent"
	waitedForRetry = "to retry the upstream (its Retry-After or backoff); the retry was not sent"
)

// stillLive refuses, as authenticate would, token id if it was revoked or expired since the call
// authenticated it: for a call that waited (the credential's limiter, the upstream's 429 pause, a
// retry's backoff), just before it is sent. waited says what it waited for (waitedFor...).
func (b *Broker) stillLive(ctx context.Context, id, waited string) error {
	st, err := b.lookupToken(id)
	if err != nil {
		return fmt.Errorf("token %s: %w", id, err)
	}
	t := st.record()
	ci := callInfo(ctx)
	if t.Revoked || b.watch.hasExited(t.ID) {
		ci.Event = RefusedRevokedToken
		return unauthenticated(ReasonTokenRevoked, "token %s was revoked while the call waited %s", t.ID, waited)
	}
	if now := b.now(); !now.Before(t.ExpiresAt) {
		ci.Event = RefusedExpiredToken
		return unauthenticated(ReasonTokenExpired, "token %s expired at %s while the call waited %s", t.ID, t.ExpiresAt.UTC().Format(time.RFC3339), waited)
	}
	return nil
}

// Search authenticates raw, checks that it may call the requested tool, validates the request,
// counts a use if the token is limited, and performs the upstream call with the tool's credential.
func (b *Broker) Search(ctx context.Context, raw string, caller Caller, req SearchRequest) (*SearchResult, error) {
	st, err := b.authenticate(ctx, raw, caller)
	if err != nil {
		return nil, err
	}
	t := st.record()
	if req.Tool == "" {
		req.Tool = DefaultTool
	}
	ci := callInfo(ctx)
	tool, ok := LookupTool(req.Tool)
	if !ok {
		return nil, invalid("unknown tool %s; known tools: %s", quoteInput(req.Tool), strings.Join(ToolNames(), ", "))
	}
	ci.Tool = tool.Name
	if !slices.Contains(t.Tools, tool.Name) {
		return nil, refusal(ReasonToolNotInScope, 0, fmt.Errorf("%w: token %s may not call %s (allowed: %s)", ErrPermissionDenied, t.ID, tool.Name, strings.Join(t.Tools, ", ")))
	}
	body, err := tool.body(&req)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	ci.QueryLen, ci.QueryMAC = len(req.Query), b.store.QueryDigest(req.Query)
	if st, err = b.allowCall(st); err != nil {
		return nil, err
	}
	st.touch(b.now())
	call := &upstreamCall{b: b, caller: caller, start: time.Now(), token: t.ID}
	if t.MaxUses > 0 {
		// A use is reserved durably before the call (concurrent calls cannot pass the limit, a
		// crash leaves it counted) and given back if the call does not reach the upstream.
		if _, err := b.store.UseToken(t.ID, b.now()); err != nil {
			if errors.Is(err, store.ErrExhausted) {
				ci.Event = RefusedSpentToken
				return nil, unauthenticated(ReasonTokenExhausted, "token %s has used all %d of its uses; ask the operator to mint a new one", t.ID, t.MaxUses)
			}
			return nil, fmt.Errorf("count token use: %w", err)
		}
		call.use = &useHold{b: b, id: t.ID}
	}
	ci.Credential = tool.Credential
	return b.spend(ctx, call, t, tool, &req, payload)
}

// callUpstream loads the tool's credential, calls the upstream with it (falling back to the
// previous version within the grace window) and parses the results. resume is asked before every
// attempt that followed a wait (upstream.Request.Resume).
func (b *Broker) callUpstream(ctx context.Context, t *store.Token, tool Tool, payload []byte, resume upstream.Resumer) (*SearchResult, *upstream.Response, error) {
	ci := callInfo(ctx)
	key, version, err := b.store.LoadCredential(tool.Credential)
	ci.CredentialVersion = version
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w: credential %q is not stored; the operator must run `brokerctl credential put %s`", ErrCredentialMissing, tool.Credential, tool.Credential)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load credential %q: %w", tool.Credential, err)
	}
	defer clear(key) // cleared below as soon as it is used; this is for a call that panics (panics.go)
	// Once sent, the request runs on a context detached from the caller's (ended only by Drain):
	// the upstream may bill it whatever the caller does, so its answer must not be thrown away.
	detached, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(b.flights.ctx, cancel)()
	resp, err := b.upstream.DoDetached(upstream.WithGate(ctx, b.gateFor(tool.Credential, version)), detached, upstream.Request{Path: tool.Path, Auth: tool.Auth, Body: payload, Decode: b.decode, Resume: resume}, key)
	b.noteReflection(ctx, tool, version, resp, err)
	if err != nil {
		// The upstream package never puts bodies in errors; redact anyway, so no future change
		// or transport message can carry the key out.
		err = redacted(err, key)
	}
	clear(key) // the plaintext lives for this call only
	if errors.Is(err, upstream.ErrRejected) {
		// Shortly after a rotation, retry once with the previous version (rotation.go).
		resp, version, err = b.graceFallback(ctx, detached, tool, payload, version, err, resume)
	}
	if sw := (*stoppedAfterWait)(nil); errors.As(err, &sw) {
		return nil, nil, err // resume refused an attempt after a wait (stillLive): not the upstream's failure
	}
	if err != nil {
		b.log.Warn("upstream call failed", "tool", tool.Name, "token_id", t.ID, "credential", tool.Credential, "version", version, "err", err)
		return nil, nil, upstreamError(tool, version, err)
	}
	res := &SearchResult{Tool: tool.Name, Credential: tool.Credential, CredentialVersion: version, src: resp.Body}
	if d, ok := resp.Decoded.(decodedAnswer); ok {
		res.wire = d.wire
		res.results, res.metadata, res.decoded = d.results, d.meta, d.wire == nil
	} else if res.wire, err = res.Wire(); err != nil {
		return nil, resp, err
	}
	return res, resp, nil
}

// errKeyReflected is the audited event's error: the upstream echoed the key it was sent.
var errKeyReflected = errors.New("the upstream echoed the credential in its answer; it was redacted before use")

// noteReflection counts, logs and audits an upstream answer (resp or err) that echoed the key.
// The upstream client has already redacted it; this makes a misbehaving upstream visible.
func (b *Broker) noteReflection(ctx context.Context, tool Tool, version uint64, resp *upstream.Response, err error) {
	var ue *upstream.Error
	if !(resp != nil && resp.KeyReflected > 0 || errors.As(err, &ue) && ue.KeyReflected) {
		return
	}
	metrics.KeyReflections.Inc()
	if ci := callInfo(ctx); ci.Event == "" {
		ci.Event = "key-reflected"
	}
	b.recordEvent(ctx, "key-reflected", tool.Credential, version, errKeyReflected)
}

// WhoAmI authenticates raw and returns its record, with the current use count for limited tokens.
func (b *Broker) WhoAmI(ctx context.Context, raw string, caller Caller) (store.Token, error) {
	t, err := b.Authenticate(ctx, raw, caller)
	if err != nil {
		return store.Token{}, err
	}
	if t.MaxUses > 0 {
		return b.store.GetToken(t.ID)
	}
	return *t, nil
}

// upstreamError adds what the caller or operator should do to an upstream failure. The wrapped
// error's message is built by the upstream package from vetted fields only.
func upstreamError(tool Tool, version uint64, err error) error {
	var hint string
	switch {
	case errors.Is(err, upstream.ErrRejected):
		hint = fmt.Sprintf("upstream rejected the credential %q v%d; the operator must rotate it (`brokerctl rotate %s`)", tool.Credential, version, tool.Credential)
	case errors.Is(err, upstream.ErrInsufficientCredits):
		hint = fmt.Sprintf("the upstream account behind %q is out of credits", tool.Credential)
	case errors.Is(err, upstream.ErrInvalidKey):
		hint = fmt.Sprintf("credential %q v%d cannot be sent in an HTTP header; the operator must rotate it", tool.Credential, version)
	default:
		return fmt.Errorf("%s via credential %q v%d: %w", tool.Name, tool.Credential, version, err)
	}
	return fmt.Errorf("%s: %w", hint, err)
}
