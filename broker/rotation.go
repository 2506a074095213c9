package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// DefaultGraceWindow is how long after a rotation a rejected current key falls back to the
// previous one (brokerd --grace-window).
const DefaultGraceWindow = 10 * time.Minute

// MinMaxAge is the shortest max age a policy accepts: a shorter one would rotate keys in a loop.
const MinMaxAge = time.Minute

// verifyQuery is the query a verified rotation sends with the new key: short, and it says what it
// is to anyone reading the provider's logs.
const verifyQuery = "credbroker key check"

// rotation is the Broker's rotation state.
type rotation struct {
	graceWindow time.Duration
	// mu serialises everything that changes which version is current (rotate, verified rotate,
	// rollback, scheduled rotation), so a verification never races another rotation.
	mu sync.Mutex

	stateMu   sync.Mutex
	fallbacks map[string]fallback // credential -> last grace fallback
	sched     *scheduler
}

// fallback records that the upstream rejected a credential's current version and the previous
// one was served instead.
type fallback struct {
	rejected, served uint64
	at, until        time.Time
}

func newRotation(cfg Config) *rotation {
	gw := cfg.GraceWindow
	if gw == 0 {
		gw = DefaultGraceWindow
	}
	return &rotation{graceWindow: gw, fallbacks: map[string]fallback{}}
}

func uidOf(c Caller) *uint32 {
	if !c.Known {
		return nil
	}
	u := c.UID
	return &u
}

// credentialEvent adds to name's short event list (shown by `credential history`). A failure to
// write it is logged, never returned: the change itself already happened and is audited.
func (b *Broker) credentialEvent(name, event string, version uint64, by *uint32, detail string) {
	if len(detail) > 300 {
		detail = detail[:300] + "…"
	}
	err := b.store.AppendCredentialEvent(name, store.CredentialEvent{At: b.now(), Event: event, Version: version, ByUID: by, Detail: detail})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		b.log.Error("credential event not recorded", "credential", name, "event", event, "err", err)
	}
}

func validateName(name string) error {
	if !validCredentialName(name) {
		return invalid("credential name must match [a-z0-9_.-]{1,64}")
	}
	return nil
}

// verifyTool returns the tool a verified rotation of credential calls: web_search if it spends
// the credential, else the first tool that does.
func verifyTool(credential string) (Tool, bool) {
	var found []Tool
	for _, t := range tools {
		if t.Credential == credential {
			found = append(found, t)
		}
	}
	for _, t := range found {
		if t.Name == DefaultTool {
			return t, true
		}
	}
	if len(found) > 0 {
		return found[0], true
	}
	return Tool{}, false
}

// RotateOptions says how a rotation is made.
type RotateOptions struct {
	Caller Caller
	// Verify stages the new value as pending, tries it upstream and promotes it only on success.
	Verify bool
	// How records how the version was made; default store.HowManual.
	How store.How
}

// Rotate stores value as the next version of name. Without Verify it is current when Rotate
// returns. With Verify it is staged, tried with one upstream call, and promoted only if the
// upstream accepts it; otherwise it is discarded and the current version stays in use.
func (b *Broker) Rotate(ctx context.Context, name string, value []byte, o RotateOptions) (store.Credential, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "rotate"
	if o.Verify {
		ci.Event = "rotate-verified"
	}
	if err := ValidateCredential(name, value); err != nil {
		return store.Credential{}, err
	}
	b.rot.mu.Lock()
	defer b.rot.mu.Unlock()
	c, err := b.rotateLocked(ctx, name, value, store.VersionMeta{At: b.now(), ByUID: uidOf(o.Caller), How: o.How}, o.Verify)
	ci.CredentialVersion = c.Version
	if err != nil {
		if o.Verify {
			ci.Event = "rotate-verify-failed"
		}
		metrics.RotationFailed(name)
		ev := "rotate-failed"
		if o.Verify {
			ev = "rotate-verify-failed"
		}
		b.credentialEvent(name, ev, c.Version, uidOf(o.Caller), err.Error())
		return c, err
	}
	metrics.RotationSucceeded(name)
	b.credentialEvent(name, ci.Event, c.Version, uidOf(o.Caller), "")
	b.log.Info("credential rotated", "credential", name, "version", c.Version, "how", o.How, "verified", o.Verify)
	return c, nil
}

// rotateLocked does Rotate's work; b.rot.mu is held. On a failed verification it returns the
// staged version number in the Credential (and the error).
func (b *Broker) rotateLocked(ctx context.Context, name string, value []byte, m store.VersionMeta, verify bool) (store.Credential, error) {
	if !verify {
		return b.store.AddVersion(name, value, m)
	}
	tool, ok := verifyTool(name)
	if !ok {
		return store.Credential{}, invalid("credential %q is not spent by any tool, so there is no upstream call to verify it with; rotate without --verify", name)
	}
	cur, err := b.store.GetCredential(name)
	if err != nil {
		return store.Credential{}, err
	}
	v, err := b.store.StageVersion(name, value, m)
	if err != nil {
		return store.Credential{}, err
	}
	if err := b.verifyKey(ctx, tool, value); err != nil {
		if derr := b.store.DiscardVersion(name, v); derr != nil {
			b.log.Error("discard rejected pending version", "credential", name, "version", v, "err", derr)
		}
		b.log.Warn("new key not promoted", "credential", name, "pending_version", v, "current_version", cur.Version, "err", err)
		staged := store.Credential{Name: name, Version: v}
		if errors.Is(err, upstream.ErrRejected) {
			return staged, fmt.Errorf("upstream rejected the new key; it was not promoted (credential %q stays at v%d; the staged v%d was discarded): %w", name, cur.Version, v, err)
		}
		return staged, fmt.Errorf("the new key could not be verified, so it was not promoted (credential %q stays at v%d; the staged v%d was discarded): %w", name, cur.Version, v, err)
	}
	return b.store.PromoteVersion(name, v, true, b.now())
}

// verifyKey makes one small upstream call with key through tool.
func (b *Broker) verifyKey(ctx context.Context, tool Tool, key []byte) error {
	req := SearchRequest{Tool: tool.Name, Query: verifyQuery}
	if tool.Name == DefaultTool {
		req.NumResults = 1
	}
	body, err := tool.body(&req)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return err
	}
	if !upstream.HeaderSafe(key) {
		return upstream.ErrInvalidKey
	}
	resp, err := b.upstream.Do(ctx, upstream.Request{Path: tool.Path, Auth: tool.Auth, Body: payload}, key)
	b.noteReflection(ctx, tool, 0, resp, err) // 0: the staged version is not current yet
	if err != nil {
		return redacted(err, key)
	}
	return nil
}

// History returns a credential's metadata and kept versions.
func (b *Broker) History(ctx context.Context, name string) (store.Credential, []store.Version, error) {
	callInfo(ctx).Credential = name
	if err := validateName(name); err != nil {
		return store.Credential{}, nil, err
	}
	return b.store.History(name)
}

// CredentialEvents returns name's recent rotation events, oldest first.
func (b *Broker) CredentialEvents(name string) ([]store.CredentialEvent, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	return b.store.CredentialEvents(name)
}

// Rollback makes version to (0: the previous one) current again, as a new version. It returns
// the credential after the rollback and the version whose value it now serves.
func (b *Broker) Rollback(ctx context.Context, name string, to uint64, caller Caller) (store.Credential, uint64, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "rollback"
	if err := validateName(name); err != nil {
		return store.Credential{}, 0, err
	}
	b.rot.mu.Lock()
	defer b.rot.mu.Unlock()
	cur, versions, err := b.store.History(name)
	if err != nil {
		return store.Credential{}, 0, err
	}
	var kept []string
	byNumber := map[uint64]store.Version{}
	for _, v := range versions {
		byNumber[v.Version] = v
		if v.State != store.StatePending {
			kept = append(kept, fmt.Sprint(v.Version))
		}
	}
	if to == 0 {
		to = cur.Previous
		if _, ok := byNumber[to]; !ok || to == 0 {
			to = 0
			for _, v := range versions {
				if v.State == store.StatePrevious {
					to = v.Version // the newest kept earlier version
				}
			}
		}
		if to == 0 {
			return store.Credential{}, 0, invalid("credential %q has no earlier version kept to roll back to (kept: %s)", name, strings.Join(kept, ", "))
		}
	}
	v, ok := byNumber[to]
	switch {
	case !ok:
		return store.Credential{}, 0, fmt.Errorf("credential %q version %d is not kept (kept: %s): %w", name, to, strings.Join(kept, ", "), store.ErrNotFound)
	case v.State == store.StateCurrent:
		return store.Credential{}, 0, invalid("credential %q version %d is already current", name, to)
	case v.State == store.StatePending:
		return store.Credential{}, 0, invalid("credential %q version %d is pending (never promoted); it cannot be rolled back to", name, to)
	}
	c, err := b.store.Rollback(name, to, store.VersionMeta{At: b.now(), ByUID: uidOf(caller)})
	if err != nil {
		return store.Credential{}, 0, err
	}
	ci.CredentialVersion = c.Version
	b.credentialEvent(name, "rollback", c.Version, uidOf(caller), fmt.Sprintf("value of v%d", to))
	b.log.Info("credential rolled back", "credential", name, "version", c.Version, "value_of", to)
	return c, to, nil
}

// SetPolicy sets (or, with a zero p, clears) name's rotation policy. A rotate command makes
// brokerd execute a program as its own user, which is more than an admin uid may otherwise do, so
// only root and brokerd's own uid may set one.
func (b *Broker) SetPolicy(ctx context.Context, name string, p store.Policy, caller Caller) (store.Credential, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "policy"
	if err := validateName(name); err != nil {
		return store.Credential{}, err
	}
	switch {
	case p.MaxAge < 0:
		return store.Credential{}, invalid("max age must not be negative")
	case p.MaxAge > 0 && p.MaxAge < MinMaxAge:
		return store.Credential{}, invalid("max age %s is shorter than the minimum %s", p.MaxAge, MinMaxAge)
	case len(p.RotateCommand) > 0 && p.MaxAge == 0:
		return store.Credential{}, invalid("a rotate command runs when the credential is due, so it needs a max age (--max-age)")
	case p.Verify && len(p.RotateCommand) == 0:
		return store.Credential{}, invalid("verify applies to scheduled rotations and needs a rotate command (--rotate-command)")
	}
	if len(p.RotateCommand) > 0 {
		if !caller.Known || (caller.UID != 0 && caller.UID != uint32(os.Geteuid())) {
			return store.Credential{}, fmt.Errorf("%w: only root or brokerd's own uid may set a rotate command: brokerd would run it as its own user", ErrPermissionDenied)
		}
		if err := validateCommand(p.RotateCommand); err != nil {
			return store.Credential{}, err
		}
	}
	if p.Verify {
		if _, ok := verifyTool(name); !ok {
			return store.Credential{}, invalid("credential %q is not spent by any tool, so scheduled rotations cannot be verified", name)
		}
	}
	c, err := b.store.SetPolicy(name, p)
	if err != nil {
		return store.Credential{}, err
	}
	b.rot.sched.forget(name)
	detail := "cleared"
	if !p.IsZero() {
		detail = fmt.Sprintf("max age %s, rotate command: %v, verify: %v", p.MaxAge, len(p.RotateCommand) > 0, p.Verify)
	}
	b.credentialEvent(name, "policy", c.Version, uidOf(caller), detail)
	b.log.Info("rotation policy set", "credential", name, "max_age", p.MaxAge, "rotate_command", len(p.RotateCommand) > 0, "verify", p.Verify)
	return c, nil
}

var importSourceRE = regexp.MustCompile(`^[a-z0-9-]{0,32}$`)

// Import stores a credential read from another store as version 1 (how=import).
func (b *Broker) Import(ctx context.Context, name string, value []byte, source string, caller Caller) (store.Credential, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "import"
	if err := ValidateCredential(name, value); err != nil {
		return store.Credential{}, err
	}
	if !importSourceRE.MatchString(source) {
		return store.Credential{}, invalid("import source must match [a-z0-9-]{0,32}")
	}
	c, err := b.store.CreateCredential(name, value, store.VersionMeta{At: b.now(), ByUID: uidOf(caller), How: store.HowImport})
	ci.CredentialVersion = c.Version
	if err != nil {
		return c, err
	}
	b.credentialEvent(name, "import", c.Version, uidOf(caller), "from "+orDefault(source, "another store"))
	b.log.Info("credential imported", "credential", name, "version", c.Version, "source", source)
	return c, nil
}

// Rekey rotates the data keyset (see store.Store.Rekey).
func (b *Broker) Rekey(ctx context.Context) (store.RekeyResult, error) {
	callInfo(ctx).Event = "rekey"
	res, err := b.store.Rekey()
	if err != nil {
		b.log.Error("rekey stopped; run it again to finish", "reencrypted", res.Reencrypted, "err", err)
		return res, err
	}
	b.log.Info("data keyset rotated", "primary_key_id", res.NewPrimaryKeyID, "resumed", res.Resumed,
		"reencrypted", res.Reencrypted, "total", res.Total, "removed_key_ids", res.RemovedKeyIDs)
	if creds, err := b.store.ListCredentials(); err == nil {
		for _, c := range creds {
			b.credentialEvent(c.Name, "rekey", c.Version, nil, fmt.Sprintf("every version re-encrypted under data key %d", res.NewPrimaryKeyID))
		}
	}
	return res, nil
}

// graceFallback is called when the upstream rejected version of tool's credential. Within the
// grace window after a rotation it retries once with the previous version; it returns the
// response and the version that served it, or the original error.
func (b *Broker) graceFallback(ctx, detached context.Context, tool Tool, payload []byte, version uint64, cause error, resume upstream.Resumer) (*upstream.Response, uint64, error) {
	if b.rot.graceWindow <= 0 {
		return nil, version, cause
	}
	c, err := b.store.GetCredential(tool.Credential)
	now := b.now()
	if err != nil || c.Version != version || c.Previous == 0 || !inGraceWindow(now, c.RotatedAt, b.rot.graceWindow) {
		return nil, version, cause
	}
	if rolledBack(b.store, tool.Credential, version) {
		// After a rollback the previous version is the one the operator rolled away from (a leaked
		// key, another account's): never served again behind their back.
		return nil, version, cause
	}
	prev, err := b.store.LoadCredentialVersion(tool.Credential, c.Previous)
	if err != nil {
		return nil, version, cause
	}
	// The previous key's attempts enter the credential's 429 gate like the current key's, and its
	// error is redacted against the key it was sent with, as callUpstream does for the current one.
	resp, err := b.upstream.DoDetached(upstream.WithGate(ctx, b.gateFor(tool.Credential, version)), detached,
		upstream.Request{Path: tool.Path, Auth: tool.Auth, Body: payload, Decode: b.decode, Resume: resume}, prev)
	if err != nil {
		err = redacted(err, prev)
	}
	clear(prev)
	b.noteReflection(ctx, tool, c.Previous, resp, err)
	if upstream.MayHaveBilled(err) {
		return nil, c.Previous, err // the fallback may have been charged: say so, not the rejection
	}
	if sw := (*stoppedAfterWait)(nil); errors.As(err, &sw) {
		return nil, version, err // the token died while the fallback waited: say so, not the rejection
	}
	if err != nil {
		return nil, version, cause
	}
	ci := callInfo(ctx)
	ci.Event, ci.CredentialVersion = "fallback-previous-version", c.Previous
	until := c.RotatedAt.Add(b.rot.graceWindow)
	if latest := now.Add(b.rot.graceWindow); until.After(latest) {
		until = latest // a rotation stamped ahead of now: inGraceWindow ends it by then at the latest
	}
	b.rot.stateMu.Lock()
	first := b.rot.fallbacks[tool.Credential].rejected != version
	b.rot.fallbacks[tool.Credential] = fallback{rejected: version, served: c.Previous, at: now, until: until}
	b.rot.stateMu.Unlock()
	if first {
		// Once per rejected version: every call in the window would otherwise flood the log.
		b.recordEvent(ctx, "fallback-previous-version", tool.Credential, c.Previous, cause)
		b.credentialEvent(tool.Credential, "fallback-previous-version", c.Previous, nil, fmt.Sprintf("v%d rejected by the upstream; serving v%d until %s", version, c.Previous, until.UTC().Format(time.RFC3339)))
		b.log.Warn("current key rejected, serving previous", "credential", tool.Credential, "rejected_version", version,
			"serving_version", c.Previous, "grace_window_ends", until)
	}
	return resp, c.Previous, nil
}

// inGraceWindow reports whether now is within window of a rotation at rotatedAt. A rotation
// stamped later than now (the clock was ahead then, or stepped back since) counts only by as much
// as the window: otherwise the fallback would stay open for as long as the clock was wrong.
func inGraceWindow(now, rotatedAt time.Time, window time.Duration) bool {
	age := now.Sub(rotatedAt)
	return age < window && age > -window
}

// rolledBack reports whether version of name was made by a rollback, or cannot be told (then no
// fallback either: it would send a key nobody chose to send).
func rolledBack(st *store.Store, name string, version uint64) bool {
	_, versions, err := st.History(name)
	if err != nil {
		return true
	}
	for _, v := range versions {
		if v.Version == version {
			return v.How == store.HowRollback
		}
	}
	return true
}

// RotationInfo is the rotation part of Status.
type RotationInfo struct {
	Warnings         []string
	MasterKeyIDs     []uint32
	DataPrimaryKeyID uint32
	DataKeys         []DataKey
	Rotation         []RotationStatus
}

// DataKey is one data key and how many stored versions it encrypts.
type DataKey struct {
	ID       uint32
	Primary  bool
	Versions int
}

// RotationStatus is a credential's state under its policy.
type RotationStatus struct {
	Credential  string
	Version     uint64
	RotatedAt   time.Time
	NextDue     time.Time // zero without a max age
	Overdue     bool
	AutoRotate  bool
	Failures    int
	LastError   string
	NextAttempt time.Time
}

// Due returns when c is next due for rotation and whether that has passed; ok is false without a
// max age.
// This is the scheduler's count (scheduler.nextDue): a version stamped ahead of the clock is due max
// age after brokerd first saw it.
func (b *Broker) Due(c store.Credential) (next time.Time, overdue, ok bool) {
	now := b.now()
	next, ok = b.rot.sched.nextDue(c, now)
	return next, ok && !now.Before(next), ok
}

// rotationInfo gathers key usage, policies, scheduler failures and fallbacks for Status.
func (b *Broker) rotationInfo(now time.Time) (RotationInfo, error) {
	var ri RotationInfo
	u, err := b.store.Keys()
	if err != nil {
		return ri, err
	}
	ri.MasterKeyIDs, ri.DataPrimaryKeyID = u.MasterKeyIDs, u.DataPrimaryKeyID
	ids := slices.Clone(u.DataKeyIDs)
	for id := range u.VersionsByKey {
		if !slices.Contains(ids, id) {
			ids = append(ids, id) // a version under a key the keyset no longer has: shown, and warned below
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		ri.DataKeys = append(ri.DataKeys, DataKey{ID: id, Primary: id == u.DataPrimaryKeyID, Versions: u.VersionsByKey[id]})
		if !slices.Contains(u.DataKeyIDs, id) {
			ri.Warnings = append(ri.Warnings, fmt.Sprintf("%d credential versions are encrypted under data key %d, which the data keyset no longer holds", u.VersionsByKey[id], id))
		}
	}
	if u.RekeyTarget != 0 {
		ri.Warnings = append(ri.Warnings, fmt.Sprintf("a data-key rotation to key %d is unfinished; run `brokerctl rekey` to finish it", u.RekeyTarget))
	}
	if len(u.MasterKeyIDs) > 1 {
		ri.Warnings = append(ri.Warnings, fmt.Sprintf("the database is wrapped under %d master keys; restart or reload brokerd to re-wrap under one", len(u.MasterKeyIDs)))
	}

	creds, err := b.store.ListCredentials()
	if err != nil {
		return ri, err
	}
	b.rot.stateMu.Lock()
	fbs := make(map[string]fallback, len(b.rot.fallbacks))
	for k, v := range b.rot.fallbacks {
		fbs[k] = v
	}
	b.rot.stateMu.Unlock()
	failures := b.rot.sched.failures()
	for _, c := range creds {
		if fb, ok := fbs[c.Name]; ok && fb.rejected == c.Version && now.Before(fb.until) {
			ri.Warnings = append(ri.Warnings, fmt.Sprintf("credential %s: current key rejected, serving previous (v%d rejected by the upstream at %s; serving v%d until the grace window ends at %s; rotate or roll back now)",
				c.Name, fb.rejected, fb.at.UTC().Format(time.RFC3339), fb.served, fb.until.UTC().Format(time.RFC3339)))
		}
		if c.Pending != 0 {
			ri.Warnings = append(ri.Warnings, fmt.Sprintf("credential %s: version %d is staged (pending) and was never promoted", c.Name, c.Pending))
		}
		if w := ceilingWarning(c); w != "" {
			ri.Warnings = append(ri.Warnings, w)
		}
		if c.Policy == nil {
			continue
		}
		rs := RotationStatus{Credential: c.Name, Version: c.Version, RotatedAt: c.RotatedAt, AutoRotate: len(c.Policy.RotateCommand) > 0}
		if next, ok := b.rot.sched.nextDue(c, now); ok {
			rs.NextDue, rs.Overdue = next, !now.Before(next)
			if a, ok := b.rot.sched.aheadOf(c); ok {
				ri.Warnings = append(ri.Warnings, fmt.Sprintf("credential %s: v%d is stamped rotated at %s, ahead of this host's clock when brokerd first saw it at %s (the clock was ahead then or has stepped back since; check NTP); its age counts from then, so it is due at %s",
					c.Name, c.Version, c.RotatedAt.UTC().Format(time.RFC3339), a.seen.UTC().Format(time.RFC3339), next.UTC().Format(time.RFC3339)))
			}
		}
		if f, ok := failures[c.Name]; ok && f.version == c.Version {
			rs.Failures, rs.LastError, rs.NextAttempt = f.count, f.lastErr, f.next
			ri.Warnings = append(ri.Warnings, fmt.Sprintf("credential %s: scheduled rotation failed %d time(s), last at %s: %s; next attempt at %s",
				c.Name, f.count, f.at.UTC().Format(time.RFC3339), f.lastErr, f.next.UTC().Format(time.RFC3339)))
		} else if rs.Overdue && !rs.AutoRotate {
			ri.Warnings = append(ri.Warnings, fmt.Sprintf("credential %s: due for rotation since %s (max age %s); run `brokerctl rotate %s`",
				c.Name, rs.NextDue.UTC().Format(time.RFC3339), c.Policy.MaxAge, c.Name))
		}
		ri.Rotation = append(ri.Rotation, rs)
	}
	return ri, nil
}
