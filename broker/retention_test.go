package broker

import (
	"context"
	"sync"
	"testing"
	"time"
)

// recordEvents audits n events at the fake clock's time, concurrently (so they group-commit).
func (e *schedEnv) recordEvents(t *testing.T, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if err := e.b.RecordEvent(context.Background(), "test", "", 0, nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// retainOnce runs one retention pass, as RunAuditRetention does every interval.
func (e *schedEnv) retainOnce(t *testing.T, retention time.Duration) int {
	t.Helper()
	n, err := e.b.pruneAudit(context.Background(), retention)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Issue 16 item 3: retention deletes in transactions of at most 1000 records, so no call's audit
// append waits behind the whole prune (215k records in one transaction stalled a call for 3.4 s).
// Counted in bbolt transactions, not time.
func TestAuditRetentionPrunesInBatches(t *testing.T) {
	e := newSchedEnv(t)
	const retention = 24 * time.Hour
	e.recordEvents(t, 2500)
	e.clock.Advance(2 * retention)
	e.recordEvents(t, 1) // a call today: the records of two days ago are past retention

	txBefore := e.st.LastTxID()
	e.retainOnce(t, retention)
	txs := e.st.LastTxID() - txBefore

	v, err := e.st.VerifyAudit()
	if err != nil || !v.OK || v.Checked != 1 || v.FirstSeq != 2501 {
		t.Fatalf("after retention: %+v %v", v, err)
	}
	if txs < 3 {
		t.Errorf("2500 records were pruned in %d transaction(s); want batches of at most 1000 (3 or more)", txs)
	}
}
