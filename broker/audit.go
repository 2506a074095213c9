package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/store"
)

// CallRecord is what the gRPC edge knows about a finished call.
type CallRecord struct {
	Method  string
	Caller  Caller
	Code    string
	Latency time.Duration
	Info    *CallInfo
}

// RecordCall makes the audit record of a call durable. It fails (store.ErrAuditUnavailable) when
// the record cannot be written, and the caller must then fail the call: nothing goes unaudited.
func (b *Broker) RecordCall(ctx context.Context, r CallRecord) error {
	// The record is written even if the caller gave up: the call happened.
	start := time.Now()
	defer func() { metrics.ObserveAuditWrite(time.Since(start)) }()
	return b.store.AppendAudit(context.WithoutCancel(ctx), b.auditRecord(r))
}

// auditRecord is r as the audit log keeps it.
func (b *Broker) auditRecord(r CallRecord) store.AuditRecord {
	ci := r.Info
	if ci == nil {
		ci = &CallInfo{}
	}
	// Only names that passed validation reach the audit log: the raw input of a refused request
	// (perhaps a key typed into the wrong field, perhaps 60 KB of junk) is not kept.
	credential, tool := ci.Credential, ci.Tool
	if !validCredentialName(credential) {
		credential = ""
	}
	if _, ok := LookupTool(tool); !ok {
		tool = ""
	}
	return store.AuditRecord{
		Time: b.now().UTC(), PeerKnown: r.Caller.Known, UID: r.Caller.UID, GID: r.Caller.GID, PID: r.Caller.PID,
		TokenID: ci.TokenID, Method: r.Method, Tool: tool, Code: r.Code, LatencyMicros: r.Latency.Microseconds(),
		Credential: credential, CredentialVersion: ci.CredentialVersion, QueryLen: ci.QueryLen, QueryMAC: ci.QueryMAC,
		Event: ci.Event, Credits: ci.Credits, CreditsSaved: ci.CreditsSaved, TokenLabel: ci.TokenLabel,
		PIDFD: r.Caller.PIDFD, Exe: r.Caller.Exe, Comm: r.Caller.Comm, Workload: ci.Workload,
	}
}

// putToken stores a minted token. Called through the gRPC auditor (ci.Outcome set), the token and
// the call's OK record are committed together, so a token never exists without its record and a
// mint costs one durable commit; otherwise (tests, embedders) the token alone is written.
func (b *Broker) putToken(ctx context.Context, ci *CallInfo, t store.Token) error {
	if ci.Outcome == nil {
		if err := b.store.PutToken(t); err != nil {
			return err
		}
		ci.TokenID = t.ID
		return nil
	}
	start := time.Now()
	defer func() { metrics.ObserveAuditWrite(time.Since(start)) }()
	ci.TokenID = t.ID
	if err := b.store.PutTokenAudited(ctx, t, b.auditRecord(ci.Outcome("OK"))); err != nil {
		ci.TokenID = ""
		if errors.Is(err, store.ErrOutcomeUnknown) {
			b.log.Error("token commit failed and its outcome is unknown", "token_id", t.ID, "err", err)
			return fmt.Errorf("%w: the disk reported an error while token %s was stored, and brokerd cannot tell whether it was; "+
				"after brokerd restarts, `brokerctl token inspect %s` says, and `brokerctl token revoke %s` removes it", store.ErrOutcomeUnknown, t.ID, t.ID, t.ID)
		}
		if errors.Is(err, store.ErrAuditUnavailable) {
			// The detail (bbolt's error, the file's path) is for the operator, not the caller.
			b.log.Error("token and its audit record not committed; failing the mint", "err", err)
			return fmt.Errorf("%w: the token was not stored; the operator must check brokerd's log and disk", store.ErrAuditUnavailable)
		}
		return err
	}
	ci.Recorded = true
	return nil
}

// AuditHealthy reports whether audit records are being written; see store.AuditHealthy.
func (b *Broker) AuditHealthy() error { return b.store.AuditHealthy() }

// lowDisk is the free space below which Status warns: bbolt grows the file in steps of up to
// 16 MiB, and every write, audit records included, fails once none is left.
const lowDisk = 16 << 20

// diskWarning is Status's line about the space left for the database, if it is short. A full
// disk is the usual reason audited calls are refused, and while the disk is full the audit
// writer's state flaps (a commit that fits in pages bbolt can reuse still succeeds), so Status
// reads the file system itself.
func (b *Broker) diskWarning() string {
	free, err := b.store.DiskFree()
	switch {
	case err != nil:
		b.log.Warn("status: cannot read the free space on the database's file system", "err", err)
		return ""
	case free < 1<<20:
		return fmt.Sprintf("the disk holding the database is full (%d KiB free): writes and audited calls fail until space is freed", free>>10)
	case free < lowDisk:
		return fmt.Sprintf("the disk holding the database is nearly full (%d MiB free): writes and audited calls fail once it is", free>>20)
	}
	return ""
}

// auditWarning is Status's line for an audit log that cannot be written: why, when the disk says
// (never bbolt's raw error, which names paths), and what it means for callers.
func auditWarning(err error) string {
	why := "see brokerd's log"
	for _, e := range []struct {
		errno syscall.Errno
		why   string
	}{{syscall.ENOSPC, "the disk is full"}, {syscall.EDQUOT, "the disk quota is exceeded"}, {syscall.EROFS, "the file system is read-only"}, {syscall.EIO, "an I/O error"}} {
		if errors.Is(err, e.errno) {
			why = e.why
			break
		}
	}
	return fmt.Sprintf("the audit log cannot be written (%s): audited calls are refused until it can; brokerd retries on the next call, no restart needed", why)
}

// RecordEvent audits something that happened without an RPC (a scheduled rotation, a fallback).
func (b *Broker) RecordEvent(ctx context.Context, event, credential string, version uint64, err error) error {
	code := "OK"
	if err != nil {
		code = "ERROR"
	}
	return b.store.AppendAudit(context.WithoutCancel(ctx), store.AuditRecord{
		Time: b.now().UTC(), Method: "event", Code: code, Credential: credential, CredentialVersion: version, Event: event,
	})
}

// ListAudit returns up to pageSize records after afterSeq at or after since.
func (b *Broker) ListAudit(afterSeq uint64, since time.Time, pageSize int) ([]store.AuditRecord, error) {
	switch {
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize < 0 || pageSize > MaxPageSize:
		return nil, invalid("page_size must be between 1 and %d", MaxPageSize)
	}
	return b.store.ListAudit(afterSeq, since, pageSize)
}

// VerifyAudit walks the audit chain.
func (b *Broker) VerifyAudit() (store.AuditVerification, error) { return b.store.VerifyAudit() }

// maxPrunePerRun is the least a retention pass (one an hour in brokerd) may delete; a pass may
// delete up to twice the records audited since the previous one if that is more, so retention
// keeps up with any steady traffic and catches up a backlog at that rate. The cutoff already keeps
// every record within the retention of the newest one; the bound caps the damage when that
// reference is itself wrong (calls audited after the clock jumped forward carry the future time)
// to one logged pass's worth an hour, giving an operator time to notice.
const maxPrunePerRun = 100_000

// auditRetention is audit retention's state between passes; only RunAuditRetention's goroutine
// (or a test calling pruneAudit) touches it.
type auditRetention struct {
	perRun      int    // the least a pass may delete; 0 is maxPrunePerRun (tests lower it)
	lastSeq     uint64 // the newest record's seq at the previous pass (0: no pass yet)
	clockWarned bool   // the clock-jump warning was logged and its condition has not cleared since
}

// RunAuditRetention prunes audit records older than retention every interval until ctx ends.
func (b *Broker) RunAuditRetention(ctx context.Context, retention, interval time.Duration) error {
	if retention <= 0 {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		b.pruneAudit(ctx, retention)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// pruneAudit is one retention pass. It deletes records older than the retention before the
// earlier of now and the newest record's time: a wall clock stepped far forward (or a broker idle
// longer than the retention) then keeps the last retention's worth of records instead of deleting
// the whole log in one go, and the step is logged. A pass deletes a bounded number of records
// (maxPrunePerRun, or twice the records audited since the previous pass if more). The
// store deletes in small batches between the audit writer's group commits, so calls go on while
// it runs; ctx ending stops it between batches.
func (b *Broker) pruneAudit(ctx context.Context, retention time.Duration) (int, error) {
	now := b.now()
	rec, ok, err := b.store.NewestAudit()
	if err != nil {
		b.log.Error("audit retention", "err", err)
		return 0, err
	}
	if !ok {
		return 0, nil // an empty log
	}
	newest := rec.Time
	ref := now
	if newest.Before(now) {
		ref = newest
	}
	if ahead := now.Sub(newest); ahead <= retention {
		b.ret.clockWarned = false
	} else if !b.ret.clockWarned {
		// The old rule (now minus the retention) would have deleted the whole log here.
		b.ret.clockWarned = true
		b.log.Warn("audit retention: the wall clock is more than the retention past the newest audit record; "+
			"the clock jumped forward (or nothing was audited for that long). Keeping the records within the retention of the newest one",
			"now", now.UTC(), "newest_record", newest.UTC(), "ahead", ahead.Round(time.Second), "retention", retention)
	}
	limit := b.ret.perRun
	if limit <= 0 {
		limit = maxPrunePerRun
	}
	if b.ret.lastSeq != 0 && rec.Seq > b.ret.lastSeq {
		limit = max(limit, 2*int(min(rec.Seq-b.ret.lastSeq, math.MaxInt32)))
	}
	b.ret.lastSeq = rec.Seq
	n, err := b.store.PruneAudit(ctx, ref.Add(-retention), limit)
	switch {
	case err != nil && ctx.Err() == nil:
		b.log.Error("audit retention", "err", err, "pruned", n)
	case n >= limit:
		b.log.Warn("audit retention pruned the most records one pass may; the rest go in the next pass",
			"records", n, "retention", retention)
	case n > 0:
		b.log.Info("audit retention pruned records", "records", n, "retention", retention)
	}
	return n, err
}

// WatchAudit calls send with the records after afterSeq at or after since: first those already
// written, a page at a time, then the records of each commit as it lands. It returns when ctx
// ends (ctx's error), when send fails (its error) or when the store closes
// (store.ErrAuditUnavailable). It never polls: it waits for the audit writer's commit signal and
// then rereads the log from where it was, so the writer never waits for a watcher, a slow
// watcher holds one page in memory at most, and nothing committed is skipped.
func (b *Broker) WatchAudit(ctx context.Context, afterSeq uint64, since time.Time, send func([]store.AuditRecord) error) error {
	closed := b.store.AuditClosed()
	for {
		// Taken before the read, so a commit that lands after the read still wakes us.
		committed := b.store.AuditCommitted()
		select {
		case <-closed:
			return fmt.Errorf("%w: brokerd is stopping", store.ErrAuditUnavailable)
		default:
		}
		recs, last, err := b.store.ScanAudit(afterSeq, since, MaxPageSize)
		if err != nil {
			return err
		}
		// Resume after the last record read, even one since skipped: an old log is scanned once,
		// not at every commit.
		afterSeq = last
		if len(recs) > 0 {
			if err := send(recs); err != nil {
				return err
			}
			if len(recs) == MaxPageSize {
				continue // more backlog now
			}
		}
		select {
		case <-committed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
