package broker

import (
	"context"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker/connlimit"
	"github.com/credbroker/credbroker/broker/metrics"
)

// Refusals anyone who can reach the socket can cause (no token, a bad token, an admin call from
// a non-admin uid, an unknown method, a request that does not decode, a connection over its
// uid's cap) are coalesced before they reach the audit log: one durable record per uid and
// reason per interval instead of one per refusal, so a flood costs a bounded number of records
// a day (README "Resource limits") instead of filling the disk, which would make fail-closed
// brokerd refuse every call, admin calls included.
//
// Per (uid, reason): the first refusal after a quiet interval is recorded at once, in full
// (count 1), so an operator sees it without waiting; the ones after it are only counted, and at
// the end of each interval one record carrying the count is written. An interval with no new
// refusal forgets the key, and the next refusal is again recorded at once. So a key costs at
// most two records in one interval and at most intervals+1 records in any run of intervals.
// Counts whose record could not be written stay pending and go into the next record: nothing is
// lost, and nothing is written per refusal.

// DefaultRefusalInterval is how often coalesced refusal counts are written.
const DefaultRefusalInterval = time.Minute

// Refusal reasons (the audit record's event and the metric's label). The set is fixed, which
// keeps both the metric's labels and the coalescer's keys bounded whatever a caller sends.
const (
	RefusedNoToken       = "no-token"
	RefusedInvalidToken  = "invalid-token" // malformed, unknown or wrong secret
	RefusedRevokedToken  = "revoked-token"
	RefusedExpiredToken  = "expired-token"
	RefusedBoundMisuse   = "bound-token-misuse"
	RefusedSpentToken    = "spent-token"
	RefusedNotAdmin      = "not-admin"
	RefusedUnknownMethod = "unknown-method"
	RefusedUndecodable   = "undecodable-request"
	RefusedConnUID       = connlimit.ReasonPerUID // the uid has --max-conns-per-uid connections open
	RefusedConnTotal     = connlimit.ReasonTotal  // brokerd has --max-conns connections open
	RefusedAttestation   = "attestation-refused"  // FetchToken: no registration matches the process
	RefusedWatchLimit    = "watch-limit"          // FetchToken: the process-bound tokens brokerd watches are all taken
	RefusedFetchRate     = "fetch-rate-limited"   // FetchToken: the uid fetched FetchBurstPerUID tokens just now
)

// RefusalReasons lists every reason, for metrics that should start at 0.
var RefusalReasons = []string{
	RefusedNoToken, RefusedInvalidToken, RefusedRevokedToken, RefusedExpiredToken, RefusedBoundMisuse,
	RefusedSpentToken, RefusedNotAdmin, RefusedUnknownMethod, RefusedUndecodable, RefusedConnUID, RefusedConnTotal, RefusedAttestation,
	RefusedWatchLimit, RefusedFetchRate,
}

func init() {
	for _, r := range RefusalReasons {
		metrics.Refusals.WithLabelValues(r) // 0 from the start, not "no data"
	}
}

type refusalKey struct {
	known  bool
	uid    uint32
	reason string
}

// refusalCount is a key's state within the current interval.
type refusalCount struct {
	pending uint64     // refusals counted but not yet in a durable record
	last    CallRecord // the newest refusal, the template for the coalesced record
	seen    bool       // a refusal arrived during the current interval
}

// refusalLog is the coalescer. The zero value is ready to use.
type refusalLog struct {
	mu   sync.Mutex
	keys map[refusalKey]*refusalCount
}

// RecordRefusal audits a call or connection refused for reason (one of the Refused* constants)
// before it did anything, coalesced as described above. It never fails the caller: the refusal
// stands whether or not its record is written yet.
func (b *Broker) RecordRefusal(ctx context.Context, r CallRecord, reason string) {
	metrics.Refused(reason)
	k := refusalKey{known: r.Caller.Known, uid: r.Caller.UID, reason: reason}
	l := &b.refused
	l.mu.Lock()
	if l.keys == nil {
		l.keys = make(map[refusalKey]*refusalCount)
	}
	// The kept template drops Info: the flushed record never uses it, and its token id may be a
	// slice of the caller's bearer string, which would keep the secret in memory.
	last := r
	last.Info = nil
	c, ok := l.keys[k]
	if ok {
		c.pending++
		c.last, c.seen = last, true
		l.mu.Unlock()
		return
	}
	// The first refusal of a quiet key: claim the key, then write outside the lock.
	c = &refusalCount{last: last, seen: true}
	l.keys[k] = c
	l.mu.Unlock()
	rec := r
	rec.Info = refusalInfo(r.Info, reason)
	if err := b.appendCounted(ctx, rec, 1); err != nil {
		b.log.Error("audit record of a refusal not written; it is counted in the next one", "event", reason, "uid", r.Caller.UID, "err", err)
		l.mu.Lock()
		c.pending++
		l.mu.Unlock()
	}
}

// refusalInfo is what a refusal's record keeps of the call: the event, and the token id the
// caller sent (already shape-checked by the token parser), nothing the caller could grow.
func refusalInfo(ci *CallInfo, reason string) *CallInfo {
	out := &CallInfo{Event: reason}
	if ci != nil {
		out.TokenID, out.TokenLabel = ci.TokenID, ci.TokenLabel
	}
	return out
}

// FlushRefusals writes one record for each key with refusals pending (its count, the newest
// refusal's caller and method, no token id: the count may cover several) and forgets keys that had
// no refusal during the interval. brokerd calls it every interval and once at shutdown.
func (b *Broker) FlushRefusals(ctx context.Context) error {
	type due struct {
		k   refusalKey
		c   *refusalCount
		n   uint64
		rec CallRecord
	}
	l := &b.refused
	var todo []due
	l.mu.Lock()
	for k, c := range l.keys {
		switch {
		case c.pending > 0:
			todo = append(todo, due{k, c, c.pending, c.last})
			c.pending = 0
		case !c.seen:
			delete(l.keys, k)
			continue
		}
		c.seen = false
	}
	l.mu.Unlock()
	var firstErr error
	for _, d := range todo {
		rec := d.rec
		rec.Latency = 0
		rec.Info = &CallInfo{Event: d.k.reason}
		err := b.appendCounted(ctx, rec, d.n)
		if err == nil {
			continue
		}
		if firstErr == nil {
			firstErr = err
		}
		l.mu.Lock()
		d.c.pending += d.n
		d.c.seen = true // keep the key so the count is not lost
		if _, ok := l.keys[d.k]; !ok {
			l.keys[d.k] = d.c
		}
		l.mu.Unlock()
	}
	if firstErr != nil {
		b.log.Error("coalesced refusal records not written; their counts carry over", "err", firstErr)
	}
	return firstErr
}

// appendCounted writes r as a record standing for n refusals.
func (b *Broker) appendCounted(ctx context.Context, r CallRecord, n uint64) error {
	start := time.Now()
	defer func() { metrics.ObserveAuditWrite(time.Since(start)) }()
	ar := b.auditRecord(r)
	ar.Count = n
	return b.store.AppendAudit(context.WithoutCancel(ctx), ar)
}

// RunRefusalFlush calls FlushRefusals every interval (0: DefaultRefusalInterval) until ctx ends.
// The caller flushes once more after the server has stopped, so the last interval is kept.
func (b *Broker) RunRefusalFlush(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRefusalInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.FlushRefusals(ctx)
		}
	}
}
