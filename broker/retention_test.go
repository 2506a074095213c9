package broker

import (
	"context"
	"strings"
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

// Issue 16 item 6: a forward wall-clock jump larger than the retention deleted the whole audit
// log in one pass. Now a pass never deletes a record newer than the newest record minus the
// retention, logs the jump once, and deletes at most a bounded number of records.
func TestAuditRetentionClockJump(t *testing.T) {
	e := newSchedEnv(t)
	const retention = 24 * time.Hour
	for range 4 { // 5 records every 12h: T0, T0+12h, T0+24h, T0+36h
		e.recordEvents(t, 5)
		e.clock.Advance(retention / 2)
	}
	e.clock.Advance(-retention / 2)
	newest := e.clock.Now()
	keepFrom := newest.Add(-retention) // T0+12h: records from here on must stay

	e.clock.Advance(10 * retention) // the wall clock steps forward 10 days
	for pass := 1; pass <= 2; pass++ {
		n := e.retainOnce(t, retention)
		if want := map[int]int{1: 5, 2: 0}[pass]; n != want {
			t.Errorf("pass %d after the jump pruned %d records, want %d (only those before newest-retention)", pass, n, want)
		}
	}
	recs, err := e.st.ListAudit(0, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Time.Before(keepFrom) {
			t.Errorf("record %d (%s) is older than the newest record minus the retention but was kept", r.Seq, r.Time)
		}
	}
	if v, err := e.st.VerifyAudit(); err != nil || !v.OK || v.FirstSeq != 6 || v.Checked != 15 {
		t.Fatalf("after the jump: %+v %v (want records 6..20 kept, chain OK)", v, err)
	}
	if got := strings.Count(e.logs.String(), "the wall clock is more than the retention past the newest audit record"); got != 1 {
		t.Errorf("clock jump logged %d times over two passes, want once:\n%s", got, e.logs.String())
	}

	// A call audited after the jump carries the jumped time, so the old records are now past
	// the retention of the newest one: a pass deletes no more than its bound, and says so.
	e.b.ret.perRun = 7
	e.recordEvents(t, 1)
	if n := e.retainOnce(t, retention); n != 7 {
		t.Errorf("a pass with a bound of 7 pruned %d records", n)
	}
	if v, _ := e.st.VerifyAudit(); !v.OK || v.FirstSeq != 13 || v.Checked != 9 {
		t.Fatalf("after a bounded pass: %+v", v)
	}
	if !strings.Contains(e.logs.String(), "pruned the most records one pass may") {
		t.Errorf("a pass that hit its bound did not say so:\n%s", e.logs.String())
	}

	// The bound grows to twice the records audited since the previous pass, so retention keeps
	// up with traffic: 5 new records allow 10, and the 8 old records left all go.
	e.recordEvents(t, 5)
	if n := e.retainOnce(t, retention); n != 8 {
		t.Errorf("after 5 new records, a pass with a bound of max(7, 2×5) pruned %d records, want 8", n)
	}
	if v, _ := e.st.VerifyAudit(); !v.OK || v.FirstSeq != 21 || v.Checked != 6 {
		t.Fatalf("after the last pass: %+v", v)
	}
}
