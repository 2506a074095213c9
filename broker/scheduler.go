package broker

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/store"
)

// Clock is the time the rotation scheduler runs on. Tests pass a fake one and advance it instead
// of sleeping.
type Clock interface {
	Now() time.Time
	// After delivers the time once d has passed, like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// SchedulerConfig tunes the rotation scheduler. Zero values select the defaults.
type SchedulerConfig struct {
	// Interval is how often policies are checked. Default 30s.
	Interval time.Duration
	// Stagger is the shortest gap between two scheduled rotations, so credentials due together
	// are not rotated in the same second (and a bad rotate command cannot burn through all of them
	// at once). Default 1m.
	Stagger time.Duration
	// CommandTimeout bounds one run of a rotate command. Default 1m.
	CommandTimeout time.Duration
	// BackoffBase is the wait before retrying a failed scheduled rotation, doubled per consecutive
	// failure up to BackoffMax. Defaults 1m and 1h.
	BackoffBase, BackoffMax time.Duration
}

// scheduler warns about credentials that are due and rotates those whose policy has a rotate
// command.
type scheduler struct {
	b     *Broker
	clock Clock
	cfg   SchedulerConfig

	mu      sync.Mutex
	warned  map[string]uint64 // credential -> version already reported as due
	fails   map[string]schedFailure
	ahead   map[string]aheadStamp // credential -> its current version, stamped ahead of the clock
	lastRun time.Time             // start of the last scheduled rotation
}

// schedFailure is the state of a credential whose scheduled rotation keeps failing.
type schedFailure struct {
	version  uint64 // the current version when it failed; a manual rotation resets the count
	count    int
	lastErr  string
	at, next time.Time
}

// ClockAheadTolerance is how far in the future a version's RotatedAt may lie before the scheduler
// stops trusting it. An NTP correction steps a clock by a second or two, and a version imported
// from another host carries that host's clock; a minute (also MinMaxAge, the shortest max age) is
// well past both and still small against any max age, so it costs at most a minute of key life.
const ClockAheadTolerance = time.Minute

// aheadStamp is a version whose RotatedAt was later than the clock (by more than
// ClockAheadTolerance) when this brokerd first saw it: the clock was ahead when it was rotated, or
// has stepped back since. Its age counts from seen, not from the stamp.
type aheadStamp struct {
	version   uint64
	rotatedAt time.Time // with version, names the version even if the credential is deleted and re-created
	seen      time.Time
	warned    bool
}

func newScheduler(b *Broker, clock Clock, cfg SchedulerConfig) *scheduler {
	if clock == nil {
		clock = realClock{}
	}
	cfg.Interval = orDefault(cfg.Interval, 30*time.Second)
	cfg.Stagger = orDefault(cfg.Stagger, time.Minute)
	cfg.CommandTimeout = orDefault(cfg.CommandTimeout, DefaultRotateTimeout)
	cfg.BackoffBase = orDefault(cfg.BackoffBase, time.Minute)
	cfg.BackoffMax = orDefault(cfg.BackoffMax, time.Hour)
	return &scheduler{b: b, clock: clock, cfg: cfg, warned: map[string]uint64{}, fails: map[string]schedFailure{},
		ahead: map[string]aheadStamp{}}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// RunScheduler checks rotation policies every SchedulerConfig.Interval until ctx ends: it logs a
// warning (once per version) when a credential becomes due, and rotates a due credential whose
// policy has a rotate command. Cancelling ctx is a clean stop (a running command is killed).
func (b *Broker) RunScheduler(ctx context.Context) error {
	s := b.rot.sched
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-s.clock.After(s.cfg.Interval):
		}
	}
}

// tick does one round: warn about every newly due credential, then rotate at most one.
func (s *scheduler) tick(ctx context.Context) {
	now := s.clock.Now()
	creds, err := s.b.store.ListCredentials()
	if errors.Is(err, store.ErrTampered) {
		// Fail closed: no rotate command runs while any credential record does not verify.
		s.b.log.Error("DATABASE TAMPERING: rotation scheduler refuses to run any rotate command", "err", err)
		return
	}
	if err != nil {
		s.b.log.Error("rotation scheduler: list credentials", "err", err)
		return
	}
	type dueCred struct {
		c   store.Credential
		due time.Time
	}
	var due []dueCred
	nDue := 0
	defer func() { metrics.SetCredentialsDue(nDue) }()
	for _, c := range creds {
		next, ok := s.nextDue(c, now)
		if a, first := s.aheadWarning(c); first {
			s.b.log.Warn("credential rotated at a time ahead of this host's clock: the clock was ahead then or has stepped back since; its age counts from when brokerd first saw it",
				"credential", c.Name, "version", c.Version, "rotated_at", c.RotatedAt, "ahead_by", c.RotatedAt.Sub(a.seen).Round(time.Second),
				"counted_from", a.seen, "due", next)
			detail := fmt.Sprintf("v%d is stamped rotated at %s, %s ahead of this host's clock; check the clock (NTP). Its age counts from %s",
				c.Version, c.RotatedAt.UTC().Format(time.RFC3339), c.RotatedAt.Sub(a.seen).Round(time.Second), a.seen.UTC().Format(time.RFC3339))
			s.b.recordEvent(ctx, "rotation-clock-ahead", c.Name, c.Version, nil)
			s.b.credentialEvent(c.Name, "rotation-clock-ahead", c.Version, nil, detail)
		}
		if !ok || now.Before(next) {
			continue
		}
		nDue++
		s.mu.Lock()
		newlyDue := s.warned[c.Name] != c.Version
		s.warned[c.Name] = c.Version
		s.mu.Unlock()
		if newlyDue {
			s.b.log.Warn("credential due for rotation", "credential", c.Name, "version", c.Version,
				"due_since", next, "max_age", c.Policy.MaxAge, "auto_rotate", len(c.Policy.RotateCommand) > 0)
			s.b.recordEvent(ctx, "rotation-due", c.Name, c.Version, nil)
			s.b.credentialEvent(c.Name, "rotation-due", c.Version, nil, fmt.Sprintf("v%d reached the max age %s", c.Version, c.Policy.MaxAge))
		}
		if len(c.Policy.RotateCommand) > 0 {
			due = append(due, dueCred{c, next})
		}
	}
	sort.SliceStable(due, func(i, j int) bool { return due[i].due.Before(due[j].due) })
	for _, d := range due {
		s.mu.Lock()
		f, failed := s.fails[d.c.Name]
		if failed && f.version == d.c.Version && now.Before(f.next) {
			s.mu.Unlock()
			continue
		}
		if !s.lastRun.IsZero() && now.Sub(s.lastRun) < s.cfg.Stagger {
			s.mu.Unlock()
			return
		}
		s.lastRun = now
		s.mu.Unlock()
		s.rotate(ctx, d.c, now)
		return
	}
}

// nextDue returns when c is due as the scheduler counts it, and false without a max age: max age
// after its RotatedAt, or, for a version stamped more than ClockAheadTolerance ahead of now, max age
// after this brokerd first saw it so (remembered per credential and version), which is sooner.
// Otherwise a stamp ahead of the clock would keep the key past its max age by however far the clock
// was off. Status and `credential list` ask here too, so they show what the scheduler will do.
func (s *scheduler) nextDue(c store.Credential, now time.Time) (time.Time, bool) {
	next, ok := c.Policy.NextDue(c.RotatedAt)
	if !ok {
		return next, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, seen := s.ahead[c.Name]
	if seen && !a.is(c) {
		delete(s.ahead, c.Name)
		seen = false
	}
	if !seen && c.RotatedAt.Sub(now) > ClockAheadTolerance {
		a, seen = aheadStamp{version: c.Version, rotatedAt: c.RotatedAt, seen: now}, true
		s.ahead[c.Name] = a
	}
	if seen {
		// Always the sooner: seen is before RotatedAt by more than the tolerance.
		next = a.seen.Add(c.Policy.MaxAge)
	}
	return next, true
}

// aheadWarning returns c's current version's stamp ahead of the clock, and true the first time it
// is asked about that version.
func (s *scheduler) aheadWarning(c store.Credential) (aheadStamp, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.ahead[c.Name]
	if !ok || !a.is(c) || a.warned {
		return a, false
	}
	a.warned = true
	s.ahead[c.Name] = a
	return a, true
}

// aheadOf returns what the scheduler remembers about c's current version stamped ahead of the clock.
func (s *scheduler) aheadOf(c store.Credential) (aheadStamp, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.ahead[c.Name]
	return a, ok && a.is(c)
}

func (a aheadStamp) is(c store.Credential) bool {
	return a.version == c.Version && a.rotatedAt.Equal(c.RotatedAt)
}

// rotate runs c's rotate command and commits its key; a failure is kept for Status and retried
// after a backoff.
func (s *scheduler) rotate(ctx context.Context, c store.Credential, now time.Time) {
	s.b.log.Info("scheduled rotation starting", "credential", c.Name, "version", c.Version)
	key, err := runRotateCommand(ctx, c.Policy.RotateCommand, c.Name, c.Version, s.cfg.CommandTimeout)
	var nc store.Credential
	if err == nil {
		nc, err = s.b.scheduledRotate(ctx, c, key)
		clear(key)
	}
	if err != nil && ctx.Err() != nil {
		return // shutting down: not the command's fault
	}
	// A rotation that committed as shutdown began is still recorded below (the audit writer
	// closes only after the scheduler has stopped; RecordEvent ignores ctx's cancellation).
	if err != nil {
		s.mu.Lock()
		f := s.fails[c.Name]
		if f.version != c.Version {
			f = schedFailure{version: c.Version}
		}
		f.count++
		f.lastErr, f.at, f.next = err.Error(), now, now.Add(s.backoff(f.count))
		s.fails[c.Name] = f
		s.mu.Unlock()
		s.b.log.Error("scheduled rotation failed; the current key stays in use", "credential", c.Name, "version", c.Version,
			"failures", f.count, "next_attempt", f.next, "err", err)
		s.b.recordEvent(ctx, "scheduled-rotate-failed", c.Name, c.Version, err)
		s.b.credentialEvent(c.Name, "scheduled-rotate-failed", c.Version, nil, err.Error())
		metrics.RotationFailed(c.Name)
		return
	}
	s.mu.Lock()
	delete(s.fails, c.Name)
	s.mu.Unlock()
	if nc.Version == c.Version {
		return // rotated by someone else meanwhile
	}
	s.b.recordEvent(ctx, "scheduled-rotate", c.Name, nc.Version, nil)
	s.b.credentialEvent(c.Name, "scheduled-rotate", nc.Version, nil, "")
	metrics.RotationSucceeded(c.Name)
}

func (s *scheduler) backoff(failures int) time.Duration {
	d := s.cfg.BackoffBase
	for i := 1; i < failures && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, s.cfg.BackoffMax)
}

// forget drops what the scheduler remembers about name (its policy changed), except when it first
// saw a version stamped ahead of the clock: that is about the version, not the policy.
func (s *scheduler) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.warned, name)
	delete(s.fails, name)
}

func (s *scheduler) failures() map[string]schedFailure {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]schedFailure, len(s.fails))
	for k, v := range s.fails {
		out[k] = v
	}
	return out
}

// scheduledRotate commits key as the next version of c (how=scheduled, verified first if the
// policy says so), unless c was rotated meanwhile.
func (b *Broker) scheduledRotate(ctx context.Context, c store.Credential, key []byte) (store.Credential, error) {
	if err := ValidateCredential(c.Name, key); err != nil {
		return store.Credential{}, fmt.Errorf("rotate command printed an unusable key: %w", err)
	}
	b.rot.mu.Lock()
	defer b.rot.mu.Unlock()
	cur, version, err := b.store.LoadCredential(c.Name)
	if err != nil {
		return store.Credential{}, err
	}
	same := subtle.ConstantTimeCompare(cur, key) == 1
	clear(cur)
	if version != c.Version {
		b.log.Info("scheduled rotation skipped: the credential was rotated meanwhile", "credential", c.Name, "version", version)
		return store.Credential{Name: c.Name, Version: c.Version}, nil
	}
	if same {
		return store.Credential{}, fmt.Errorf("rotate command printed the current key; nothing was rotated")
	}
	euid := uint32(os.Geteuid())
	nc, err := b.rotateLocked(ctx, c.Name, key, store.VersionMeta{At: b.now(), ByUID: &euid, How: store.HowScheduled}, c.Policy.Verify)
	if err != nil {
		return store.Credential{}, err
	}
	b.log.Info("credential rotated on schedule", "credential", c.Name, "version", nc.Version, "verified", c.Policy.Verify)
	return nc, nil
}
