package broker

import (
	"context"
	"log/slog"
)

// recordEvent logs, and audits, something that happened without an RPC of its own: a scheduled
// rotation, a grace fallback, a credential becoming due. Events inside an RPC go through CallInfo
// instead and are audited with the call.
//
// Wired to the audit log by the lead: this body logs with slog and appends to the audit chain
// through RecordEvent. A failed append is logged, not returned: there is no call to fail.
func (b *Broker) recordEvent(ctx context.Context, event, credential string, version uint64, err error) {
	attrs := []any{"event", event, "credential", credential, "version", version}
	level := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, "err", err)
		level = slog.LevelWarn
	}
	b.log.Log(ctx, level, "credential event", attrs...)
	if aerr := b.RecordEvent(ctx, event, credential, version, err); aerr != nil {
		b.log.Error("audit record for event not written", "event", event, "credential", credential, "err", aerr)
	}
}
