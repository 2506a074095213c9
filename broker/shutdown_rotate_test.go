package broker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/store"
)

// SIGTERM (ctx cancel) landing while a scheduled rotation commits: a version that was stored is
// still audited as scheduled-rotate (it used to be skipped as "shutting down").
func TestScheduledRotateAtShutdownIsAudited(t *testing.T) {
	gaps := 0
	for trial := 0; trial < 10 && gaps == 0; trial++ {
		e := newSchedEnv(t)
		marker := filepath.Join(e.dir, "printed")
		cmd := e.script(t, "newkey", printKey+"\ntouch "+marker)
		e.put(t, DefaultCredential, store.Policy{MaxAge: time.Hour, RotateCommand: []string{cmd}})
		e.clock.Advance(time.Hour)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { // brokerd: SIGTERM cancels bgCtx
			for ctx.Err() == nil {
				if _, err := os.Stat(marker); err == nil {
					cancel()
					return
				}
			}
		}()
		e.b.rot.sched.tick(ctx)
		cancel()
		v := e.version(t, DefaultCredential)
		recs, _ := e.st.ListAudit(0, time.Time{}, 100)
		var evs []string
		for _, r := range recs {
			evs = append(evs, r.Event)
		}
		if v == 2 && !strings.Contains(strings.Join(evs, ","), "scheduled-rotate") {
			gaps++
			t.Logf("trial %d: credential now v%d, audit events: %v (no scheduled-rotate record)", trial, v, evs)
		}
	}
	if gaps > 0 {
		t.Fail()
	}
}
