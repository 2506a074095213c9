package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/attest"
	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/store"
)

// Workload attestation (issue 17): an operator registers a program (AddWorkload) and that
// program fetches short-lived tokens with no secret (FetchToken), each bound to its uid and to
// the life of the process that fetched it. Who the caller is comes from broker/attest; this file
// only stores registrations, mints through MintToken and revokes a token when its process exits.

// DefaultWorkloadTTL is the lifetime of fetched tokens when a registration names none.
const DefaultWorkloadTTL = time.Hour

// MaxWatchedTokens bounds the process-bound tokens alive at once: each holds a pidfd open until
// its process exits or it expires. A client renews at about two thirds of the ttl, so a process
// has one or two alive; the bound leaves room for hundreds of MCP servers.
const MaxWatchedTokens = 512

// MaxWatchedTokensPerUID bounds the process-bound tokens the FetchTokens of one uid hold at once.
// FetchToken needs no token, so without it one registered uid (any process of it, for a --uid
// registration) could take every watch for a token's lifetime and leave every other workload
// refused. A process has one or two alive; 64 leaves room for dozens of servers of one user.
const MaxWatchedTokensPerUID = MaxWatchedTokens / 8

// One uid's FetchTokens are rate limited: FetchTokenBurstPerUID at once, then one per
// FetchIntervalPerUID (on brokerd's clock). Each fetch writes a token record, which stays, and
// audit records (its own, and its process's exit): a registered uid whose processes fetch and
// exit in a loop would otherwise grow the database as fast as it can spawn them. A client renews
// at two thirds of its token's lifetime, and a burst covers a uid's servers refetching together
// after a brokerd restart; the others retry (the refusal carries the delay).
const (
	FetchBurstPerUID    = 32
	FetchIntervalPerUID = 10 * time.Second
)

var (
	workloadNameRE = regexp.MustCompile(`^[a-z0-9_.-]{1,64}$`)
	sha256HexRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
	unitRE         = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]{1,255}\.(service|scope)$`)
)

// Event names in the audit log.
const (
	eventWorkloadAdd    = "workload-add"
	eventWorkloadRemove = "workload-remove"
	eventFetch          = "fetch"
	// EventProcessExit is a process-bound token revoked because its process exited.
	EventProcessExit = "revoke-process-exit"
	// EventRestartRevoke is a process-bound token revoked at start: brokerd cannot watch the
	// process of a token fetched before it restarted.
	EventRestartRevoke = "revoke-restart"
)

// AddWorkload validates and stores a registration. pinExe records the sha256 of the file at
// w.Exe now.
func (b *Broker) AddWorkload(ctx context.Context, w store.Workload, pinExe bool, caller Caller) (store.Workload, error) {
	ci := callInfo(ctx)
	ci.Event = eventWorkloadAdd
	if !workloadNameRE.MatchString(w.Name) {
		return store.Workload{}, invalid("workload name must match [a-z0-9_.-]{1,64}")
	}
	ci.Workload = w.Name
	if len(w.UIDs) == 0 && len(w.GIDs) == 0 && w.Unit == "" {
		return store.Workload{}, invalid("a registration needs at least one of --uid, --gid or --unit: there are no registrations for anyone")
	}
	if w.Exe != "" && (!filepath.IsAbs(w.Exe) || filepath.Clean(w.Exe) != w.Exe) {
		return store.Workload{}, invalid("exe must be a clean absolute path, as /proc/PID/exe shows it")
	}
	switch {
	case pinExe && w.ExeSHA256 != "":
		return store.Workload{}, invalid("give --exe-sha256 or --pin-exe, not both")
	case pinExe && w.Exe == "":
		return store.Workload{}, invalid("--pin-exe needs --exe PATH")
	case pinExe:
		d, err := attest.FileSHA256(w.Exe)
		if err != nil {
			return store.Workload{}, invalid("--pin-exe: cannot read %s: %v", w.Exe, errors.Unwrap(err))
		}
		w.ExeSHA256 = d
	case w.ExeSHA256 != "" && !sha256HexRE.MatchString(w.ExeSHA256):
		return store.Workload{}, invalid("exe sha256 must be 64 lowercase hex characters")
	}
	if w.Unit != "" && !unitRE.MatchString(w.Unit) {
		return store.Workload{}, invalid("unit must be a systemd unit name ending in .service or .scope")
	}
	if w.TTL == 0 {
		w.TTL = DefaultWorkloadTTL
	}
	tools, err := b.checkMint(workloadMintRequest(&w, 0))
	if err != nil {
		return store.Workload{}, err
	}
	w.Tools = tools
	slices.Sort(w.UIDs)
	w.UIDs = slices.Compact(w.UIDs)
	slices.Sort(w.GIDs)
	w.GIDs = slices.Compact(w.GIDs)
	w.CreatedAt, w.CreatedByUID = b.now().UTC(), caller.UID
	if err := b.store.PutWorkload(w); err != nil {
		return store.Workload{}, err
	}
	b.log.Info("workload registered", "workload", w.Name, "tools", w.Tools, "uids", w.UIDs, "gids", w.GIDs, "exe", w.Exe, "unit", w.Unit)
	return w, nil
}

// workloadMintRequest is what a token fetched through w is minted with.
func workloadMintRequest(w *store.Workload, uid uint32) MintRequest {
	label := w.Label
	if label == "" {
		label = "workload:" + w.Name
	}
	return MintRequest{
		Tools: w.Tools, TTL: w.TTL, MaxUses: w.MaxUses, BindUID: &uid, Label: label,
		RateLimit: w.RateLimit, RatePeriod: w.RatePeriod, BudgetCredits: w.BudgetCredits, BudgetPeriod: w.BudgetPeriod,
		Workload: w.Name,
	}
}

// ListWorkloads returns every registration, sorted by name.
func (b *Broker) ListWorkloads() ([]store.Workload, error) { return b.store.ListWorkloads() }

// RemoveWorkload deletes a registration. Tokens fetched through it live on until they expire,
// are revoked or their process exits.
func (b *Broker) RemoveWorkload(ctx context.Context, name string) error {
	ci := callInfo(ctx)
	ci.Event = eventWorkloadRemove
	if !workloadNameRE.MatchString(name) {
		return invalid("workload name must match [a-z0-9_.-]{1,64}")
	}
	ci.Workload = name
	if err := b.store.DeleteWorkload(name); err != nil {
		return err
	}
	b.log.Info("workload removed", "workload", name)
	return nil
}

// FetchToken mints a token for caller by attestation: the registration whose selectors all
// match the calling process, scoped to tools (all of the registration's when empty), bound to
// the caller's uid and revoked when the process exits. A refusal wraps ErrPermissionDenied and
// names what did not match.
func (b *Broker) FetchToken(ctx context.Context, caller Caller, tools []string) (string, store.Token, error) {
	ci := callInfo(ctx)
	ci.Event = eventFetch
	if !caller.Known {
		return "", store.Token{}, fmt.Errorf("%w: attestation needs a Unix-socket peer whose identity brokerd can verify", ErrPermissionDenied)
	}
	pin, err := attest.Pin(caller.PID, caller.StartTime, caller.PidfdInode)
	if err != nil {
		return "", store.Token{}, fmt.Errorf("%w: %v", ErrPermissionDenied, err)
	}
	defer pin.Close() // a no-op once Watch took it
	proc, err := pin.InspectContext(ctx, caller.UID, caller.GID, caller.Groups)
	if err != nil {
		return "", store.Token{}, fmt.Errorf("%w: %v", ErrPermissionDenied, err)
	}
	regs, err := b.store.ListWorkloads()
	if err != nil {
		return "", store.Token{}, err
	}
	w, err := attest.Match(regs, proc, tools)
	if err != nil {
		return "", store.Token{}, fmt.Errorf("%w: %v", ErrPermissionDenied, err)
	}
	ci.Workload = w.Name
	// Both refusals come before anything is done, to a caller that needs no token: audited like a
	// call without one (coalesced), or a registered process looping here fills the disk. The watch
	// is taken first, so a fetch refused for want of one does not spend the uid's fetch rate.
	release, err := b.watch.reserve(caller.UID, true)
	if err != nil {
		ci.Event = RefusedWatchLimit
		return "", store.Token{}, err
	}
	if wait, ok := b.watch.allowFetch(caller.UID, b.now()); !ok {
		release()
		ci.Event = RefusedFetchRate
		return "", store.Token{}, refusal(ReasonRateLimited, wait, fmt.Errorf("%w: uid %d fetched %d tokens just now, the most one uid may at once; retry in %s",
			ErrRateLimited, caller.UID, FetchBurstPerUID, wait.Round(time.Millisecond)))
	}
	r := workloadMintRequest(&w, caller.UID)
	if len(tools) > 0 {
		r.Tools = tools
	}
	tok, rec, err := b.MintToken(ctx, r, caller)
	if err != nil {
		release()
		return "", store.Token{}, err
	}
	b.watchToken(pin, rec, caller, proc.Program(), release)
	return tok, rec, nil
}

// MintBoundToProcess mints r for an admin caller like MintToken, and revokes the token when the
// calling process exits (`brokerctl exec`: brokerctl lives exactly as long as its child, so a
// brokerctl killed with SIGKILL does not leave the child's token behind).
func (b *Broker) MintBoundToProcess(ctx context.Context, r MintRequest, caller Caller) (string, store.Token, error) {
	pin, err := attest.Pin(caller.PID, caller.StartTime, caller.PidfdInode)
	if err != nil {
		return "", store.Token{}, fmt.Errorf("%w: bind_process: %v", ErrInvalidArgument, err)
	}
	defer pin.Close()
	release, err := b.watch.reserve(caller.UID, false) // an admin's: no per-uid share
	if err != nil {
		return "", store.Token{}, err
	}
	r.BindProcess = true
	tok, rec, err := b.MintToken(ctx, r, caller)
	if err != nil {
		release()
		return "", store.Token{}, err
	}
	program := caller.Exe
	if program == "" {
		program = fmt.Sprintf("pid %d", caller.PID)
	}
	b.watchToken(pin, rec, caller, program, release)
	return tok, rec, nil
}

// A process-exit revocation whose write fails (a full disk, the audit log failing) is retried
// after revokeRetryMin, doubled per failure up to revokeRetryMax, on brokerd's clock.
const (
	revokeRetryMin = 100 * time.Millisecond
	revokeRetryMax = 30 * time.Second
)

// watchToken revokes rec when the pinned process exits. The watch ends when the token is revoked
// (by that exit, or by an admin: endWatch) or expires, or brokerd stops watching; then its pidfd
// is closed and release gives its place back. A revocation still being retried keeps the place,
// so at most MaxWatchedTokens of them wait at once.
func (b *Broker) watchToken(pin *attest.Pinned, rec store.Token, caller Caller, program string, release func()) {
	stop, end, finish, ok := b.watch.begin(rec.ID)
	if !ok {
		// brokerd is stopping and watches nothing more; its next start revokes the token.
		release()
		return
	}
	expiry := time.AfterFunc(rec.ExpiresAt.Sub(b.now()), end)
	onExit := func() {
		defer end()
		b.revokeExited(rec, caller, program, stop)
	}
	closed, err := pin.Watch(stop, onExit)
	if err != nil {
		b.log.Error("cannot watch the process of a fetched token; revoking it", "token_id", rec.ID, "err", err)
		done := make(chan struct{})
		go func() { defer close(done); onExit() }()
		closed = done
	}
	go func() {
		<-stop
		<-closed
		expiry.Stop()
		finish(release)
	}()
}

// revokeExited revokes rec, whose process exited, with its audit record. The token is refused at
// once (in memory); its revocation and record are written together and retried until they land,
// or until stop: the token expired, an admin revoked it, or brokerd stops (its next start revokes
// every live process-bound token, RevokeProcessBound).
func (b *Broker) revokeExited(rec store.Token, caller Caller, program string, stop <-chan struct{}) {
	b.watch.setExited(rec.ID, true)
	caller.Exe = program
	ci := &CallInfo{TokenID: rec.ID, Event: EventProcessExit, TokenLabel: rec.Label, Workload: rec.Workload}
	b.revokeRetried(rec, CallRecord{Method: "event", Caller: caller, Code: "OK", Info: ci}, "its process exited", false, stop)
}

// revokeRetried writes rec's revocation with r, its audit record, in one commit, and retries a
// failed write (revokeRetryMin doubling to revokeRetryMax, on brokerd's clock) until it lands, the
// token expires or is gone, or stop. The caller has marked the token exited (setExited), so it is
// refused meanwhile; the mark is cleared once the stored record refuses it instead. why says what
// revoked it, for the log; failedOnce: the first attempt was made already and failed, so wait first.
func (b *Broker) revokeRetried(rec store.Token, r CallRecord, why string, failedOnce bool, stop <-chan struct{}) {
	wait := revokeRetryMin
	for attempt := 1; ; attempt++ {
		if attempt > 1 || failedOnce {
			select {
			case <-stop:
				if !b.now().Before(rec.ExpiresAt) {
					b.watch.setExited(rec.ID, false) // refused as expired from now on
				}
				b.log.Warn("revocation of a process-bound token abandoned: the token expired or was revoked, or brokerd is stopping (its next start revokes it)", "token_id", rec.ID)
				return
			case <-b.watch.after(wait):
			}
			wait = min(2*wait, revokeRetryMax)
		}
		if !b.now().Before(rec.ExpiresAt) {
			b.watch.setExited(rec.ID, false) // refused as expired from now on
			b.log.Warn("process-bound token expired before its revocation could be written", "token_id", rec.ID, "attempts", attempt-1)
			return
		}
		t, _, err := b.revokeAudited(context.Background(), rec.ID, r)
		switch {
		case err == nil:
			b.updateCachedToken(t)
			b.watch.setExited(rec.ID, false) // the record says revoked now
			b.log.Info("token revoked: "+why, "token_id", rec.ID, "workload", rec.Workload, "pid", r.Caller.PID, "attempts", attempt)
			return
		case errors.Is(err, store.ErrNotFound):
			b.watch.setExited(rec.ID, false)
			b.log.Warn("process-bound token gone before its revocation", "token_id", rec.ID)
			return
		}
		b.log.Error("process-bound token not revoked ("+why+"); it is refused, and the revocation is retried",
			"token_id", rec.ID, "attempt", attempt, "retry_in", wait, "err", err)
	}
}

// revokeLater refuses rec at once and writes its revocation with r in the background
// (revokeRetried), until it lands, an admin revokes the token (endWatch) or brokerd stops. For a
// revocation at start that could not be written: brokerd starts anyway, as on any full disk.
func (b *Broker) revokeLater(rec store.Token, r CallRecord, why string) bool {
	stop, end, finish, ok := b.watch.begin(rec.ID)
	if !ok {
		return false // brokerd is stopping; the next start revokes it
	}
	b.watch.setExited(rec.ID, true)
	go func() {
		defer finish(func() {})
		defer end()
		b.revokeRetried(rec, r, why, true, stop)
	}()
	return true
}

// revokeAudited revokes token id now and writes r, its audit record, in the same commit, so the
// revocation is never durable without its record. revoked is false for a token already revoked
// (r is not written: that revocation has its own record).
func (b *Broker) revokeAudited(ctx context.Context, id string, r CallRecord) (t store.Token, revoked bool, err error) {
	start := time.Now()
	defer func() { metrics.ObserveAuditWrite(time.Since(start)) }()
	return b.store.RevokeTokenAudited(ctx, id, b.now(), b.auditRecord(r))
}

// RevokeProcessBound revokes every live process-bound token. brokerd calls it at start: the
// processes those tokens were bound to can no longer be watched (their pidfds died with the
// previous brokerd), so a token might otherwise outlive its process. Clients fetch a new one.
// Each revocation is committed with its audit record. Once one cannot be written (a full disk),
// that token and the rest are refused in memory and their revocations retried in the background
// (revokeLater): brokerd starts, as it does on any full disk, and none of them is served.
// revoked counts the revocations made, pending those left to the background.
func (b *Broker) RevokeProcessBound(ctx context.Context) (revoked, pending int, err error) {
	now := b.now()
	var ids []store.Token
	if err := b.store.ForEachProcessBoundToken(func(t *store.Token) error {
		if t.Live(now) {
			ids = append(ids, *t)
		}
		return nil
	}); err != nil {
		return 0, 0, err
	}
	const why = "brokerd restarted and can no longer watch its process"
	record := func(t store.Token) CallRecord {
		ci := &CallInfo{TokenID: t.ID, Event: EventRestartRevoke, TokenLabel: t.Label, Workload: t.Workload}
		return CallRecord{Method: "event", Code: "OK", Info: ci}
	}
	for i, t := range ids {
		rt, ok, err := b.revokeAudited(ctx, t.ID, record(t))
		switch {
		case err == nil:
			b.updateCachedToken(rt)
			if ok {
				revoked++
			}
			continue
		case errors.Is(err, store.ErrNotFound):
			continue
		}
		b.log.Error("process-bound tokens not revoked at start; they are refused, and their revocations are retried",
			"tokens", len(ids)-i, "err", err)
		for _, t := range ids[i:] {
			if !b.revokeLater(t, record(t), why) {
				return revoked, pending, fmt.Errorf("revoke process-bound token %s: %w", t.ID, err)
			}
			pending++
		}
		break
	}
	return revoked, pending, nil
}

// StopWatching ends every process watch (brokerd stopping) and returns once they are over:
// their pidfds are closed and no revocation is being written (one still failing is left to the
// next start's RevokeProcessBound). Call it before the store closes.
func (b *Broker) StopWatching() {
	b.watch.stopAll()
	b.watch.wg.Wait()
}

// endWatch ends the watch of token id, if it is watched, and returns once its pidfd is closed
// and its place given back: an admin revoked the token.
func (b *Broker) endWatch(id string) {
	b.watch.mu.Lock()
	e, ok := b.watch.ends[id]
	b.watch.mu.Unlock()
	if ok {
		e.end()
		<-e.over
	}
	b.watch.setExited(id, false) // revoked: the record says so from now on
}

// workloadWatch counts the watched tokens and ends their watches on stop. The zero value is ready.
type workloadWatch struct {
	mu      sync.Mutex
	n       int
	perUID  map[uint32]int           // FetchToken's watches by uid (MaxWatchedTokensPerUID)
	fetches map[uint32]*rate.Limiter // FetchToken's rate by uid (FetchBurstPerUID)
	ends    map[string]watchEnd      // the watches by token id
	stop    chan struct{}
	stopped bool
	wg      sync.WaitGroup // one per watch, done once it is over

	// exited holds the tokens whose process exited and whose revocation is not yet written:
	// authenticate refuses them. Copied on write (rare), read without a lock on every call.
	exited atomic.Pointer[map[string]struct{}]

	clock Clock // the retries of a failed revocation wait on it; nil is the real clock
}

// after is clock.After.
func (w *workloadWatch) after(d time.Duration) <-chan time.Time {
	if w.clock == nil {
		return time.After(d)
	}
	return w.clock.After(d)
}

// watchEnd ends one token's watch; over is closed once the watch has given its place back.
type watchEnd struct {
	end  func()
	over <-chan struct{}
}

// begin registers the watch of token id (or a revocation retried in its place) and returns its
// stop channel, closed by end, by endWatch (an admin's revoke) or when brokerd stops watching.
// finish, once the watch's work is over, forgets it and gives release's place back; endWatch
// returns then. ok is false, and nothing is registered, when brokerd stopped watching.
func (w *workloadWatch) begin(id string) (stop <-chan struct{}, end func(), finish func(release func()), ok bool) {
	ch := make(chan struct{})
	var once sync.Once
	end = func() { once.Do(func() { close(ch) }) }
	over := make(chan struct{}) // closed once the place is given back
	if !w.add(id, end, over) {
		return nil, nil, nil, false
	}
	all := w.stopping()
	go func() {
		select {
		case <-all:
			end()
		case <-ch:
		}
	}()
	return ch, end, func(release func()) { w.remove(id, release); close(over) }, true
}

// add registers the watch of token id; false if brokerd stopped watching.
func (w *workloadWatch) add(id string, end func(), over <-chan struct{}) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	if w.ends == nil {
		w.ends = make(map[string]watchEnd)
	}
	w.ends[id] = watchEnd{end: end, over: over}
	w.wg.Add(1)
	return true
}

// remove forgets the watch of token id, which is over, and gives its place back.
func (w *workloadWatch) remove(id string, release func()) {
	w.mu.Lock()
	delete(w.ends, id)
	w.mu.Unlock()
	release()
	w.wg.Done()
}

// setExited marks token id as one whose process exited (authenticate refuses it until its
// revocation is written), or clears the mark.
func (w *workloadWatch) setExited(id string, exited bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var m map[string]struct{}
	if old := w.exited.Load(); old != nil {
		if _, ok := (*old)[id]; ok == exited {
			return
		}
		m = maps.Clone(*old)
	}
	if exited {
		if m == nil {
			m = make(map[string]struct{}, 1)
		}
		m[id] = struct{}{}
	} else {
		delete(m, id)
	}
	if len(m) == 0 {
		w.exited.Store(nil)
		return
	}
	w.exited.Store(&m)
}

// hasExited reports whether token id's process exited and its revocation is not written yet.
func (w *workloadWatch) hasExited(id string) bool {
	m := w.exited.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[id]
	return ok
}

// maxFetchLimiters is how many uids' fetch limiters are kept before full ones are dropped (a full
// one is what a new one would be). Only uids a registration matched get one.
const maxFetchLimiters = 1024

// allowFetch spends one of uid's fetches at now, or says how long until the next one.
func (w *workloadWatch) allowFetch(uid uint32, now time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	lim, ok := w.fetches[uid]
	if !ok {
		if len(w.fetches) >= maxFetchLimiters {
			for u, l := range w.fetches {
				if l.TokensAt(now) >= float64(l.Burst()) {
					delete(w.fetches, u)
				}
			}
		}
		if w.fetches == nil {
			w.fetches = make(map[uint32]*rate.Limiter)
		}
		lim = rate.NewLimiter(rate.Every(FetchIntervalPerUID), FetchBurstPerUID)
		w.fetches[uid] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// reserve takes a place for one more watched token, one of uid's share when shared (FetchToken),
// and returns the func that gives it back; an error wrapping ErrRateLimited when none is left.
func (w *workloadWatch) reserve(uid uint32, shared bool) (release func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.n >= MaxWatchedTokens:
		return nil, fmt.Errorf("%w: %d process-bound tokens are alive, the most brokerd watches; try again when some expire", ErrRateLimited, MaxWatchedTokens)
	case shared && w.perUID[uid] >= MaxWatchedTokensPerUID:
		return nil, fmt.Errorf("%w: uid %d holds %d process-bound tokens, the most one uid may; try again when some expire or their processes exit", ErrRateLimited, uid, MaxWatchedTokensPerUID)
	}
	w.n++
	if shared {
		if w.perUID == nil {
			w.perUID = make(map[uint32]int)
		}
		w.perUID[uid]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.n--
			if shared {
				if w.perUID[uid]--; w.perUID[uid] <= 0 {
					delete(w.perUID, uid)
				}
			}
		})
	}, nil
}

// WatchedTokens is how many process-bound tokens are being watched.
func (b *Broker) WatchedTokens() int {
	b.watch.mu.Lock()
	defer b.watch.mu.Unlock()
	return b.watch.n
}

func (w *workloadWatch) stopping() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop == nil {
		w.stop = make(chan struct{})
	}
	return w.stop
}

func (w *workloadWatch) stopAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop == nil {
		w.stop = make(chan struct{})
	}
	if !w.stopped {
		w.stopped = true
		close(w.stop)
	}
}
