package broker

import (
	"context"
	"errors"
	"fmt"
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
	if !credentialNameRE.MatchString(credential) {
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
		PIDFD: r.Caller.PIDFD, Exe: r.Caller.Exe, Comm: r.Caller.Comm,
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

// RunAuditRetention prunes audit records older than retention every interval until ctx ends.
func (b *Broker) RunAuditRetention(ctx context.Context, retention, interval time.Duration) error {
	if retention <= 0 {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := b.store.PruneAudit(b.now().Add(-retention))
		if err != nil {
			b.log.Error("audit retention", "err", err)
		} else if n > 0 {
			b.log.Info("audit retention pruned records", "records", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
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
