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
	r := &auditReq{probe: true, done: make(chan error, 1)}
	select {
	case s.audit.reqs <- r:
	case <-s.audit.quit:
		return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("the audit writer took no request (it is stuck in a commit?): %w", ctx.Err())
	}
	select {
	case <-r.done:
		return nil
	case <-s.audit.done:
		return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("the audit writer did not finish a commit: %w", ctx.Err())
	}
}
