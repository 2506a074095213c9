package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/attest"
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
	proc, err := pin.Inspect(caller.UID, caller.GID, caller.Groups)
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

// watchToken revokes rec when the pinned process exits; the watch ends (and the pidfd closes)
// when the token expires first or brokerd stops watching, and then release gives its place back.
func (b *Broker) watchToken(pin *attest.Pinned, rec store.Token, caller Caller, program string, release func()) {
	stop := make(chan struct{})
	var once sync.Once
	end := func() { once.Do(func() { close(stop) }) }
	expiry := time.AfterFunc(rec.ExpiresAt.Sub(b.now()), end)
	all := b.watch.stopping()
	go func() {
		select {
		case <-all:
			end()
		case <-stop:
		}
	}()
	err := pin.Watch(stop, func() {
		defer end()
		defer expiry.Stop()
		b.revokeExited(rec, caller, program)
	})
	if err != nil {
		end()
		b.log.Error("cannot watch the process of a fetched token; revoking it", "token_id", rec.ID, "err", err)
		b.revokeExited(rec, caller, program)
	}
	go func() { <-stop; release() }()
}

// revokeExited revokes a process-bound token whose process exited, audited.
func (b *Broker) revokeExited(rec store.Token, caller Caller, program string) {
	t, err := b.store.RevokeToken(rec.ID, b.now())
	if err != nil {
		b.log.Error("process-bound token not revoked after its process exited", "token_id", rec.ID, "err", err)
		return
	}
	b.updateCachedToken(t)
	caller.Exe = program
	ci := &CallInfo{TokenID: rec.ID, Event: EventProcessExit, TokenLabel: rec.Label, Workload: rec.Workload}
	if err := b.RecordCall(context.Background(), CallRecord{Method: "event", Caller: caller, Code: "OK", Info: ci}); err != nil {
		b.log.Error("audit record of a process-exit revocation not written", "token_id", rec.ID, "err", err)
	}
	b.log.Info("token revoked: its process exited", "token_id", rec.ID, "workload", rec.Workload, "pid", caller.PID)
}

// RevokeProcessBound revokes every live process-bound token. brokerd calls it at start: the
// processes those tokens were bound to can no longer be watched (their pidfds died with the
// previous brokerd), so a token might otherwise outlive its process. Clients fetch a new one.
func (b *Broker) RevokeProcessBound(ctx context.Context) (int, error) {
	now := b.now()
	var ids []store.Token
	if err := b.store.ForEachProcessBoundToken(func(t *store.Token) error {
		if t.Live(now) {
			ids = append(ids, *t)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	for _, t := range ids {
		rt, err := b.store.RevokeToken(t.ID, now)
		if err != nil {
			return 0, fmt.Errorf("revoke process-bound token %s: %w", t.ID, err)
		}
		b.updateCachedToken(rt)
		ci := &CallInfo{TokenID: t.ID, Event: EventRestartRevoke, TokenLabel: t.Label, Workload: t.Workload}
		if err := b.RecordCall(ctx, CallRecord{Method: "event", Code: "OK", Info: ci}); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// StopWatching ends every process watch (brokerd stopping): their pidfds close.
func (b *Broker) StopWatching() { b.watch.stopAll() }

// workloadWatch counts the watched tokens and ends their watches on stop. The zero value is ready.
type workloadWatch struct {
	mu      sync.Mutex
	n       int
	perUID  map[uint32]int           // FetchToken's watches by uid (MaxWatchedTokensPerUID)
	fetches map[uint32]*rate.Limiter // FetchToken's rate by uid (FetchBurstPerUID)
	stop    chan struct{}
	stopped bool
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
