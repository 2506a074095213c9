package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/limiter"
	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/resultcache"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// Spending the upstream well: one rate limiter per credential shared by every token, a result cache
// that answers repeated searches without spending a credit, per-token credit budgets and
// per-credential monthly ceilings.

// EconomicsConfig tunes the result cache.
type EconomicsConfig struct {
	// CacheTTL is how long results stay cached, per tool; tools not listed use DefaultCacheTTL.
	// A zero or negative TTL turns caching off for that tool.
	CacheTTL map[string]time.Duration
	// DefaultCacheTTL applies to tools without an entry in CacheTTL. Zero means 10 minutes;
	// negative turns the cache off.
	DefaultCacheTTL time.Duration
	// CacheBytes bounds the cache's memory. Zero means 16 MiB.
	CacheBytes int64
}

type economics struct {
	cache      *resultcache.Cache
	ttl        map[string]time.Duration
	defaultTTL time.Duration
	clock      Clock

	mu    sync.Mutex
	creds map[string]*credSpend  // by credential name; dropped when its limits change
	gates map[string]versionGate // by credential name
}

// versionGate is the half-open gate of one credential version's key.
type versionGate struct {
	version uint64
	gate    *limiter.Gate
}

// credSpend is what the broker keeps in memory about spending one credential.
type credSpend struct {
	limits store.Limits
	lim    *limiter.Limiter // nil without a rate limit
}

func newEconomics(cfg Config) *economics {
	e := cfg.Economics
	if e.DefaultCacheTTL == 0 {
		e.DefaultCacheTTL = 10 * time.Minute
	}
	if e.CacheBytes <= 0 {
		e.CacheBytes = 16 << 20
	}
	clock := cfg.Clock
	if clock == nil {
		clock = realClock{}
	}
	return &economics{
		cache: resultcache.New(e.CacheBytes, cfg.Now), ttl: e.CacheTTL, defaultTTL: e.DefaultCacheTTL,
		clock: clock, creds: map[string]*credSpend{}, gates: map[string]versionGate{},
	}
}

// gateFor returns the half-open gate (limiter.Gate) of a credential's key, which every upstream
// attempt with it enters: after a 429 one probe goes first and the other callers follow only once
// it succeeds. It outlives limit changes (the upstream's window does not care about ours); a new
// version gets a new, open gate, since the upstream's wait was about the old key. Only the newest
// version's gate is kept.
func (b *Broker) gateFor(name string, version uint64) *limiter.Gate {
	e := b.econ
	e.mu.Lock()
	defer e.mu.Unlock()
	vg, ok := e.gates[name]
	switch {
	case ok && vg.version == version:
	case ok && vg.version > version:
		return vg.gate // a call still on an older version shares the newest gate
	default:
		vg = versionGate{version: version, gate: limiter.NewGate(e.clock)}
		e.gates[name] = vg
	}
	return vg.gate
}

func (e *economics) ttlFor(tool string) time.Duration {
	if d, ok := e.ttl[tool]; ok {
		return d
	}
	return e.defaultTTL
}

// spendingFor returns the credential's limits and limiter, reading them once per change.
func (b *Broker) spendingFor(name string) (*credSpend, error) {
	e := b.econ
	e.mu.Lock()
	cs, ok := e.creds[name]
	e.mu.Unlock()
	if ok {
		return cs, nil
	}
	c, err := b.store.GetCredential(name)
	if errors.Is(err, store.ErrNotFound) {
		return &credSpend{}, nil // not cached: the credential may be stored any moment
	}
	if err != nil {
		return nil, err
	}
	cs = &credSpend{}
	if c.Limits != nil {
		cs.limits = *c.Limits
		if l := c.Limits; l.RateLimit > 0 && l.RatePeriod > 0 {
			if cs.lim, err = limiter.New(int(l.RateLimit), l.RatePeriod, int(l.Burst), e.clock); err != nil {
				return nil, err
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if prev, ok := e.creds[name]; ok {
		return prev, nil
	}
	e.creds[name] = cs
	return cs, nil
}

// forgetSpending drops the cached limits of name after they changed.
func (b *Broker) forgetSpending(name string) {
	b.econ.mu.Lock()
	delete(b.econ.creds, name)
	b.econ.mu.Unlock()
}

// expectedCredits is what a call costs upstream before the upstream says: light_request false on
// google_search costs 2, everything else 1.
func expectedCredits(tool Tool, req *SearchRequest) uint64 {
	if tool.Name == "google_search" && req.Google.LightRequest != nil && !*req.Google.LightRequest {
		return 2
	}
	return 1
}

// cacheKey partitions the cache so one token never learns what another searched: each token has
// its own partition unless it opted into the shared one. The payload is the normalised upstream
// body (validated, defaults filled in, keys sorted), so equal requests have equal keys.
func cacheKey(t *store.Token, tool Tool, payload []byte) string {
	part := "token:" + t.ID
	if t.SharedCache {
		part = "shared"
	}
	return part + "\x00" + tool.Name + "\x00" + string(payload)
}

// spend serves a validated request from the cache or the upstream, within the credential's rate
// limit and the budgets. The computation runs on its own goroutine (settle.go): the caller stops
// waiting when its ctx ends, but a request already sent runs to its answer, which is settled,
// cached and recorded.
func (b *Broker) spend(ctx context.Context, call *upstreamCall, t *store.Token, tool Tool, req *SearchRequest, payload []byte) (*SearchResult, error) {
	ci := callInfo(ctx)
	cost := expectedCredits(tool, req)
	ttl := b.econ.ttlFor(tool.Name)
	cacheable := ttl > 0 && !req.NoCache
	call.ci = *ci // what the caller knows so far; the computation's record from here on
	// Counted before the computation can start, so WaitSettled and Drain never miss one; the
	// computation exits, or this caller if it did not start one.
	if err := b.flights.enter(); err != nil {
		call.use.settle(false)
		return nil, err
	}
	var (
		v     any
		r     resultcache.Result
		err   error
		fresh *SearchResult // the computation's own result, decoded (for the caller that started it)
	)
	if cacheable {
		v, r, err = b.econ.cache.Do(ctx, cacheKey(t, tool, payload), ttl, func() (any, int64, error) {
			res, err := call.run(ctx, t, tool, payload, cost)
			if err != nil {
				// Identical calls wait on this one, which runs on this caller's ctx. A failure
				// that is this caller's own must not fail the others: they compute again
				// themselves. So for a caller that gave up, and for a wait refused only because it
				// passes this caller's deadline (the others may have more time, and are judged
				// by their own, as if each had come alone). Shared-cache tokens wait on each
				// other's identical calls, so also when this token's budget is spent or it was
				// revoked or expired while it waited: that must not tell the others this token's
				// id and budget. (A token's own partition has only its own calls: its spent budget
				// is theirs too.)
				var be *tokenBudgetError
				if ctx.Err() != nil || refusedForDeadline(err) || (t.SharedCache && (errors.As(err, &be) || errors.Is(err, ErrUnauthenticated))) {
					err = resultcache.Private(err)
				}
				return nil, 0, err
			}
			// The cache keeps the answer's bytes, not the decoded maps the caller gets, and only
			// those: a body without Content-Length was read by io.ReadAll, whose buffer grows by
			// about a quarter at a time, so its spare capacity (~300 bytes of a 1.1 KB answer)
			// would stay in the heap as long as the entry does; and the copy shares no memory with
			// the caller's result. One copy per upstream call buys that.
			body := make([]byte, len(res.rawBody))
			copy(body, res.rawBody)
			res.ans = &cachedAnswer{tool: res.Tool, credential: res.Credential, version: res.CredentialVersion, body: body}
			res.rawBody = nil
			fresh = res
			return res.ans, cachedSize(len(res.ans.body)), nil
		})
	} else {
		r.Started = true
		v, err = b.runDetached(ctx, func() (any, int64, error) {
			res, err := call.run(ctx, t, tool, payload, cost)
			if res != nil {
				res.rawBody = nil
			}
			return res, 0, err
		})
	}
	if !r.Started {
		b.flights.exit()
	}
	switch {
	case r.Started:
		call.handOff(ci) // the computation settles the use
	case err != nil:
		call.use.settle(false) // another caller's computation failed, or this caller left waiting
	default:
		call.use.settle(true) // answered from the cache
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil && err == cerr {
			return nil, callerLeft(err)
		}
		return nil, err
	}
	if !cacheable {
		if ttl > 0 {
			metrics.CacheLookup(false, 0) // no_cache asked for: a miss by request
		}
		return v.(*SearchResult), nil
	}
	if !r.Cached {
		// This caller's computation answered (Do returned after it finished, so fresh is set).
		metrics.CacheLookup(false, 0)
		return fresh, nil
	}
	// A hit (or another caller's computation): the cached answer is shared, so the caller gets a
	// result of its own that says where it came from.
	metrics.CacheLookup(true, cost)
	a := v.(*cachedAnswer)
	hit := a.hit()
	hit.Cached, hit.CacheAge = true, r.Age
	ci.Event, ci.Credits, ci.CreditsSaved, ci.CredentialVersion = "cache-hit", 0, cost, a.version
	return hit, nil
}

// spendUpstream charges the budgets, waits for a slot of the credential's limiter and calls the
// upstream. reached reports whether the call reached the upstream in a way it may bill (see
// upstream.MayHaveBilled); the budgets are refunded only when it did not. Credits the upstream
// reports are recorded whole, even past a budget (an overshoot, refused until the period resets).
func (b *Broker) spendUpstream(ctx context.Context, t *store.Token, tool Tool, payload []byte, cost uint64, resume upstream.Resumer) (_ *SearchResult, reached bool, _ error) {
	ci := callInfo(ctx)
	cs, err := b.spendingFor(tool.Credential)
	if err != nil {
		return nil, false, err
	}
	// The settle below and any refund are dated with the charge, so they land in the period the
	// charge did, or are dropped if that period has ended (store.SpendTokenBudget).
	chargedAt := b.now()
	refund, err := b.charge(t, tool, cs, int64(cost), chargedAt)
	if err != nil {
		return nil, false, err
	}
	var waited time.Duration
	if cs.lim != nil {
		if waited, err = cs.lim.WaitTook(ctx, cs.limits.MaxWait); err != nil {
			refund()
			var we *limiter.WaitError
			if errors.As(err, &we) {
				err = refusal(ReasonRateLimited, we.Wait, fmt.Errorf("%w: credential %q: %v; retry in %s", ErrRateLimited, tool.Credential, we, we.Wait.Round(time.Second)))
				if maxWait := cs.limits.MaxWait; maxWait == 0 || we.Wait <= maxWait {
					err = &pastDeadlineError{err} // ctx's deadline refused it, not --max-wait
				}
			}
			return nil, false, err
		}
		if waited > 0 {
			// The wait lasts up to the caller's deadline (with none and no --max-wait, without
			// end): a token revoked or expired meanwhile must not spend the key after all.
			if err := b.stillLive(ctx, t.ID, waitedForSlot); err != nil {
				refund()
				return nil, false, err
			}
		}
	}
	// The upstream client waits too (the credential's 429 pause, a retry's backoff): resume
	// checks the token again before any attempt that follows such a wait, and a refusal there
	// is refunded below like any call that sent nothing.
	res, resp, err := b.callUpstream(ctx, t, tool, payload, resume)
	if cs.lim != nil {
		b.learnLimits(cs.lim, resp, err)
	}
	if err != nil {
		if resp == nil && !upstream.MayHaveBilled(err) {
			refund() // provably not billed: nothing was sent, or an error status answered it
			return nil, false, err
		}
		// Sent and not answered (a timeout, a reset, cut off at shutdown), or answered 2xx with a
		// body we cannot use: the upstream may have billed it, so the expected credits stay spent.
		ci.Credits = cost
		return nil, true, err
	}
	res.Credits, res.RateLimitWait = cost, waited
	if n, ok := res.reportedCredits(); ok && n != cost {
		// The upstream knows best: settle the difference, past the budget if need be.
		b.settle(t, tool, cs, int64(n)-int64(cost), chargedAt)
		res.Credits = n
	}
	res.body, res.rawBody = int64(len(resp.Body)), resp.Body
	ci.Credits = res.Credits
	return res, true, nil
}

// settle records credits the upstream charged beyond (or short of) what was charged up front.
// It is never refused: they were spent. A budget or ceiling passed this way is an overshoot, and
// charge refuses the next calls until the period resets.
func (b *Broker) settle(t *store.Token, tool Tool, cs *credSpend, credits int64, at time.Time) {
	if t.BudgetCredits > 0 {
		if _, err := b.store.SettleTokenBudget(t.ID, at, credits); err != nil {
			b.log.Warn("settle reported credits on the token's budget", "token_id", t.ID, "credits", credits, "err", err)
		}
	}
	if cs.limits.MonthlyCredits > 0 {
		if _, err := b.store.SettleCredentialCredits(tool.Credential, at, credits); err != nil {
			b.log.Warn("settle reported credits on the credential's ceiling", "credential", tool.Credential, "credits", credits, "err", err)
		}
	}
}

// charge adds credits to the token's budget and the credential's monthly counter, where those
// exist, dated now (the periods they count against), and returns a func that undoes it.
func (b *Broker) charge(t *store.Token, tool Tool, cs *credSpend, credits int64, now time.Time) (refund func(), err error) {
	var undo []func()
	refund = func() {
		for _, f := range undo {
			f()
		}
	}
	if credits == 0 {
		return refund, nil
	}
	if t.BudgetCredits > 0 {
		if _, err := b.store.SpendTokenBudget(t.ID, now, credits); err != nil {
			if errors.Is(err, store.ErrBudgetExhausted) {
				reset := nextWindow(now, t.BudgetPeriod)
				return nil, &tokenBudgetError{refusal(ReasonBudgetExhausted, reset.Sub(now), fmt.Errorf("%w: token %s: budget of %d/%s used; resets at %s", ErrRateLimited, t.ID, t.BudgetCredits, t.BudgetPeriod,
					reset.Format(time.RFC3339)))}
			}
			return nil, err
		}
		undo = append(undo, func() { b.store.SpendTokenBudget(t.ID, now, -credits) })
	}
	if ceiling := cs.limits.MonthlyCredits; ceiling > 0 {
		if _, err := b.store.SpendCredentialCredits(tool.Credential, now, credits, ceiling); err != nil {
			refund()
			if errors.Is(err, store.ErrBudgetExhausted) {
				reset := nextWindow(now, "month")
				return nil, refusal(ReasonCredentialCeiling, reset.Sub(now), fmt.Errorf("%w: credential %q reached its monthly ceiling of %d credits; resets at %s", ErrRateLimited, tool.Credential, ceiling,
					reset.Format(time.RFC3339)))
			}
			return nil, err
		}
		undo = append(undo, func() { b.store.SpendCredentialCredits(tool.Credential, now, -credits, ceiling) })
	}
	return refund, nil
}

// pastDeadlineError is a refusal only the caller's deadline caused: the slot of the credential's
// limiter it would have had to wait for starts after it.
type pastDeadlineError struct{ error }

func (e *pastDeadlineError) Unwrap() error { return e.error }

// refusedForDeadline reports whether err refused a call only because the wait it needed (a slot
// of the credential's limiter, the upstream's Retry-After or 429 pause) passes the caller's own
// deadline: a caller with more time would have waited it out.
func refusedForDeadline(err error) bool {
	var pe *pastDeadlineError
	var ue *upstream.Error
	return errors.As(err, &pe) || errors.As(err, &ue) && ue.PastDeadline
}

// tokenBudgetError is a refusal because the calling token's own budget is spent.
type tokenBudgetError struct{ error }

func (e *tokenBudgetError) Unwrap() error { return e.error }

// nextWindow is when the budget period containing now ends (UTC).
func nextWindow(now time.Time, period string) time.Time {
	y, m, d := now.UTC().Date()
	if period == "month" {
		return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// reportedCredits reads the credits the upstream says a call cost, if it says.
func reportedCredits(number func(key string) (float64, bool)) (uint64, bool) {
	for _, k := range []string{"credits_used", "credits"} {
		if f, ok := number(k); ok && f >= 0 && f <= 1000 && f == float64(uint64(f)) {
			return uint64(f), true
		}
	}
	return 0, false
}

// learnLimits pauses every caller of the credential when the upstream says its window is spent
// (X-RateLimit-Remaining 0 until X-RateLimit-Reset) or answered 429 with a wait, so callers queue
// in the broker instead of each hitting the upstream's 429.
func (b *Broker) learnLimits(lim *limiter.Limiter, resp *upstream.Response, err error) {
	now := b.econ.clock.Now()
	var ue *upstream.Error
	if errors.As(err, &ue) && errors.Is(err, upstream.ErrRateLimited) && ue.RetryAfter > 0 {
		lim.PauseUntil(now.Add(ue.RetryAfter))
		return
	}
	if resp == nil {
		return
	}
	if resp.Header.Get("X-RateLimit-Remaining") != "0" {
		return
	}
	if reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64); err == nil {
		if until := time.Unix(reset, 0); until.After(now) && until.Sub(now) < time.Hour {
			lim.PauseUntil(until)
		}
	}
}

// SetLimits sets a credential's spending limits (a zero Limits clears them).
func (b *Broker) SetLimits(ctx context.Context, name string, l store.Limits) (store.Credential, error) {
	ci := callInfo(ctx)
	ci.Credential, ci.Event = name, "limits"
	if err := validateName(name); err != nil {
		return store.Credential{}, err
	}
	switch {
	case l.RateLimit > 0 && (l.RatePeriod < time.Second || l.RatePeriod > 24*time.Hour):
		return store.Credential{}, invalid("rate period must be between 1s and 24h, e.g. 10/m")
	case l.RateLimit == 0 && (l.RatePeriod != 0 || l.Burst != 0 || l.MaxWait != 0):
		return store.Credential{}, invalid("burst, max_wait and rate_period need a rate limit")
	case l.Burst > 10000:
		return store.Credential{}, invalid("burst must be at most 10000")
	case l.MaxWait < 0:
		return store.Credential{}, invalid("max_wait must not be negative")
	}
	c, err := b.store.SetLimits(name, l)
	if err != nil {
		return c, err
	}
	b.forgetSpending(name)
	b.log.Info("credential limits set", "credential", name, "rate_limit", l.RateLimit, "rate_period", l.RatePeriod,
		"burst", l.Burst, "max_wait", l.MaxWait, "monthly_credits", l.MonthlyCredits)
	return c, nil
}

// ceilingWarning warns when a credential has spent 80% of its monthly ceiling, and says by how
// much the upstream's reported credits passed it (an overshoot: refused until the month ends).
func ceilingWarning(c store.Credential) string {
	if c.Limits == nil || c.Limits.MonthlyCredits == 0 || c.CreditsThisMonth*5 < c.Limits.MonthlyCredits*4 {
		return ""
	}
	if ceiling := c.Limits.MonthlyCredits; c.CreditsThisMonth > ceiling {
		return fmt.Sprintf("credential %s: %d of its %d monthly credits used (overshoot %d); refused until the month ends", c.Name,
			c.CreditsThisMonth, ceiling, c.CreditsThisMonth-ceiling)
	}
	return fmt.Sprintf("credential %s: %d of its %d monthly credits used (%d%%)", c.Name, c.CreditsThisMonth,
		c.Limits.MonthlyCredits, c.CreditsThisMonth*100/c.Limits.MonthlyCredits)
}

// overshootWarning names a token whose budget the upstream's reported credits passed in the
// current period; it is refused until the period resets.
func overshootWarning(t *store.Token, now time.Time) string {
	window := store.DayWindow(now)
	if t.BudgetPeriod == "month" {
		window = store.MonthWindow(now)
	}
	if t.BudgetCredits == 0 || t.BudgetWindow != window || t.BudgetSpent <= t.BudgetCredits {
		return ""
	}
	return fmt.Sprintf("token %s: %d of its %d credits spent this %s (overshoot %d); refused until %s", t.ID, t.BudgetSpent,
		t.BudgetCredits, t.BudgetPeriod, t.BudgetSpent-t.BudgetCredits, nextWindow(now, t.BudgetPeriod).Format(time.RFC3339))
}

// UsageRow sums one token's or credential's calls.
type UsageRow struct {
	Key, Label                     string
	Calls, Credits, CacheHits, Err uint64
}

// Usage sums tool calls from the audit log since since, by "token" or "credential". It also
// returns the credits the cache saved.
func (b *Broker) Usage(by string, since time.Time) ([]UsageRow, uint64, error) {
	if by == "" {
		by = "token"
	}
	if by != "token" && by != "credential" {
		return nil, 0, invalid("by must be token or credential")
	}
	rows := map[string]*UsageRow{}
	var saved, after uint64
	for {
		recs, err := b.store.ListAudit(after, since, MaxPageSize)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range recs {
			after = r.Seq
			if !isSearchMethod(r.Method) {
				continue
			}
			key := r.TokenID
			if by == "credential" {
				key = r.Credential
			}
			if key == "" {
				key = "-"
			}
			row, ok := rows[key]
			if !ok {
				row = &UsageRow{Key: key}
				rows[key] = row
			}
			if by == "token" && r.TokenLabel != "" {
				row.Label = r.TokenLabel
			}
			row.Credits += r.Credits
			if r.Event == eventSettled {
				continue // the credits of a call already counted by its caller's record
			}
			row.Calls++
			if r.Event == "cache-hit" {
				row.CacheHits++
				saved += r.CreditsSaved
			}
			if r.Code != "OK" {
				row.Err++
			}
		}
		if len(recs) < MaxPageSize {
			break
		}
	}
	out := make([]UsageRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	sortUsage(out)
	return out, saved, nil
}

func sortUsage(rows []UsageRow) {
	slices.SortFunc(rows, func(a, b UsageRow) int { return strings.Compare(a.Key, b.Key) })
}
