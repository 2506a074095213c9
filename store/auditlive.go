package store

import (
	"context"
	"fmt"
)

// AuditWriterAnswers reports (as an error) whether the audit writer takes a request and answers it
// before ctx ends: brokerd's systemd watchdog pings only when it does. Every audited call waits on
// this writer, so one stuck in a commit (an fsync that never returns, a bbolt write lock never
// released) stops brokerd's service while its health service still answers SERVING.
//
// An answer that is a failure counts as an answer: on a full disk the writer fails fast, brokerd
// recovers by itself once space returns, and a restart would not help. The request is a probe: with
// nothing waiting in the journal it writes nothing; otherwise it moves the journal's records into
// the database, as a checkpoint would, and so also finds a bbolt write that does not finish.
func (s *Store) AuditWriterAnswers(ctx context.Context) error {
	err := s.appendAudit(ctx, &auditReq{probe: true, done: make(chan error, 1)})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("the audit writer did not answer before the deadline (is it stuck in a commit?): %w", ctx.Err())
	}
	select {
	case <-s.audit.quit:
		return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
	default:
		return nil // it answered, with a failure: see above
	}
}
