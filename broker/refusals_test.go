package broker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/credbroker/credbroker/store"
)

// The coalescer's bound: whatever the pattern of refusals, one (uid, reason) costs at most two
// records in an interval and at most intervals+1 over a run of intervals, and the counts add up.
// README "Resource limits" computes the worst-case growth of the db per day from this bound.
func TestRefusalRecordsAreBoundedPerInterval(t *testing.T) {
	const intervals = 24
	for _, c := range []struct {
		name string
		// refusals in interval i
		per func(i int) int
	}{
		{"steady flood", func(int) int { return 500 }},
		{"every other interval", func(i int) int { return (i % 2) * 500 }},
		{"one per interval", func(int) int { return 1 }},
		{"bursts of two", func(i int) int { return 2 * (i % 2) }},
		{"one every third", func(i int) int {
			if i%3 == 0 {
				return 1
			}
			return 0
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, _ := newCacheBroker(t, 16)
			ctx := context.Background()
			before, err := b.store.ListAudit(0, time.Time{}, 100000)
			if err != nil {
				t.Fatal(err)
			}
			caller := Caller{UID: 65534, GID: 65534, PID: 4242, Known: true, Comm: "flooder"}
			var want uint64
			maxPer := 0
			prev := len(before)
			for i := range intervals {
				for range c.per(i) {
					b.RecordRefusal(ctx, CallRecord{Method: "/credbroker.v1.SearchService/Search", Caller: caller, Code: "Unauthenticated"}, RefusedNoToken)
					want++
				}
				if err := b.FlushRefusals(ctx); err != nil {
					t.Fatal(err)
				}
				recs, _ := b.store.ListAudit(0, time.Time{}, 100000)
				maxPer = max(maxPer, len(recs)-prev)
				prev = len(recs)
			}
			recs, _ := b.store.ListAudit(0, time.Time{}, 100000)
			recs = recs[len(before):]
			var sum uint64
			for _, r := range recs {
				if r.Event != RefusedNoToken || r.UID != 65534 || r.TokenID != "" {
					t.Fatalf("record %+v", r)
				}
				sum += r.Count
			}
			if sum != want || len(recs) > intervals+1 || maxPer > 2 {
				t.Fatalf("%d refusals over %d intervals: %d records (at most %d in one interval) counting %d; want at most %d records, 2 per interval, counting %d",
					want, intervals, len(recs), maxPer, sum, intervals+1, want)
			}
		})
	}
}

// The size of a coalesced record as the audit bucket stores it (MAC tag, JSON body, 8-byte key),
// for README's growth figure: a non-admin caller's record has no exe (brokerd may not read
// /proc/PID/exe of another uid's process under the shipped unit), a comm of at most 15 bytes.
func TestRefusalRecordSize(t *testing.T) {
	rec := store.AuditRecord{
		Seq: 1 << 40, Time: time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC), PeerKnown: true,
		UID: 4294967294, GID: 4294967294, PID: 4194304, Method: "/credbroker.v1.AdminService/SetCredentialLimits",
		Code: "PermissionDenied", Event: RefusedUndecodable, Comm: "fifteen-bytes!!", Count: 1 << 40,
		Prev: make([]byte, 37), // a Tink HMAC-SHA256 tag: 5-byte prefix + 32
	}
	body, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	size := 37 + len(body) + 8
	t.Logf("largest coalesced refusal record of a non-admin uid: %d bytes (value %d + key 8)", size, size-8)
	if size > 512 {
		t.Fatalf("record is %d bytes; README's worst case assumes at most 512", size)
	}
}

// The coalescer keeps the newest refusal as the template of its next record, but not its CallInfo:
// the flushed record never uses it, and its token id may be a slice of the caller's bearer string
// (secret included), which the template would otherwise keep in memory until the key goes quiet.
func TestRefusalTemplateKeepsNoCallInfo(t *testing.T) {
	b, _ := newCacheBroker(t, 16)
	ctx := context.Background()
	caller := Caller{UID: 65534, Known: true}
	for range 2 { // the first claims the key, the second is counted in it
		rec := CallRecord{Method: "/credbroker.v1.SearchService/Search", Caller: caller, Code: "Unauthenticated",
			Info: &CallInfo{TokenID: "0123456789abcdef"}}
		b.RecordRefusal(ctx, rec, RefusedRevokedToken)
	}
	b.refused.mu.Lock()
	defer b.refused.mu.Unlock()
	if len(b.refused.keys) != 1 {
		t.Fatalf("%d keys, want 1", len(b.refused.keys))
	}
	for _, c := range b.refused.keys {
		if c.last.Info != nil {
			t.Errorf("the template kept the refusal's CallInfo: %+v", c.last.Info)
		}
	}
}
