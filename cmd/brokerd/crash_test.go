package main

// Crash consistency: concurrent writes through the real client (put, rotate, rollback, rotation
// policy, data-keyset rekey, mint, revoke, use-counted searches, and master keyset rotation with
// SIGHUP), SIGKILL at random moments, and after every kill an offline check of the file (bbolt
// tx.Check read-only, the store's own checks, the audit chain, every kept version decrypts) and of
// every write the client saw acknowledged, then a restart and a search.
//
// CI runs a few kills; scripts/crash.sh runs the long version (CRASH_KILLS=50 or -crash.kills).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

var crashKillsFlag = flag.Int("crash.kills", 0, "number of SIGKILLs in TestCrashConsistency (default $CRASH_KILLS, else 10)")

func crashKills() int {
	if *crashKillsFlag > 0 {
		return *crashKillsFlag
	}
	if n, err := strconv.Atoi(os.Getenv("CRASH_KILLS")); err == nil && n > 0 {
		return n
	}
	return 10
}

// crashModel is what the clients were told: every acknowledged write, and every value ever sent
// (acknowledged or not) so that an unacknowledged write that did commit is recognised as whole.
type crashModel struct {
	mu        sync.Mutex
	creds     map[string]*credState
	tokens    map[string]*tokState
	credNames []string // acknowledged credentials, for picking rotate targets
	tokenIDs  []string // acknowledged worker-minted tokens, for picking revoke targets
	searchIDs []string // use-limited tokens the workers search with (never revoked)

	policies map[string][]*policyWrite // by credential name
	rekeys   []*rekeyWrite

	acked      map[string]int // acknowledged writes by operation
	ackedRPCs  int            // acknowledged calls of any kind (each has a durable audit record)
	unknown    int            // calls cut off by a kill: outcome unknown to the client
	unexpected []string       // errors while brokerd was up
}

type credState struct {
	acked  uint64            // highest version acknowledged
	values map[uint64]string // acknowledged version -> value
	tried  map[string]bool   // every value sent for this name
}

// policyWrite is one SetRotationPolicy call; every call sets a unique max_age, so the stored policy
// names the write it came from.
type policyWrite struct {
	maxAge     time.Duration
	start, ack time.Time
	acked      bool
}

// rekeyWrite is one Rekey call (data keyset rotation).
type rekeyWrite struct {
	start, ack time.Time
	acked      bool
	refused    bool // refused (a concurrent re-wrap changed the keyset): changed nothing
	primary    uint32
}

type tokState struct {
	token       string
	maxUses     uint64
	usesAcked   uint64
	revokeTried bool
	revokeAcked bool
}

func newCrashModel() *crashModel {
	return &crashModel{creds: map[string]*credState{}, tokens: map[string]*tokState{}, policies: map[string][]*policyWrite{}, acked: map[string]int{}}
}

func (m *crashModel) cred(name string) *credState {
	c := m.creds[name]
	if c == nil {
		c = &credState{values: map[uint64]string{}, tried: map[string]bool{}}
		m.creds[name] = c
	}
	return c
}

// totalAcked counts acknowledged writes; acknowledged refusals (a rollback to a pruned version) are
// calls, not writes.
func (m *crashModel) totalAcked() int {
	n := 0
	for op, v := range m.acked {
		if !strings.Contains(op, "refused") {
			n += v
		}
	}
	return n
}

// crashWorker drives one client connection's worth of writes until ctx ends.
type crashWorker struct {
	id     int
	cycle  int
	m      *crashModel
	admin  *client.Client
	search map[string]*client.Client // by token id
	fake   interface{ AddKey(string) }
	killed *atomic.Bool
	rng    *rand.Rand
	n      int
}

func (w *crashWorker) fail(op string, err error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if w.killed.Load() {
		w.m.unknown++
		return
	}
	if len(w.m.unexpected) < 20 {
		w.m.unexpected = append(w.m.unexpected, fmt.Sprintf("%s: %v", op, err))
	}
}

func (w *crashWorker) run(ctx context.Context) {
	// Stop at the first call after the kill: only calls in flight at the kill have unknown outcomes.
	for ctx.Err() == nil && !w.killed.Load() {
		w.n++
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		switch op := w.rng.IntN(100); {
		case op < 12:
			w.put(cctx)
		case op < 34:
			w.rotate(cctx)
		case op < 39:
			w.rollback(cctx)
		case op < 45:
			w.policy(cctx)
		case op < 47:
			w.rekey(cctx)
		case op < 63:
			w.mint(cctx)
		case op < 72:
			w.revoke(cctx)
		default:
			w.searchOnce(cctx)
		}
		cancel()
	}
}

func (w *crashWorker) value() string {
	return fmt.Sprintf("sk_crash_%d_%d_%d_%08x", w.cycle, w.id, w.n, w.rng.Uint32())
}

func (w *crashWorker) put(ctx context.Context) {
	name := fmt.Sprintf("c-%d-%d-%d", w.cycle, w.id, w.n)
	val := w.value()
	w.m.mu.Lock()
	w.m.cred(name).tried[val] = true
	w.m.mu.Unlock()
	c, err := w.admin.PutCredential(ctx, name, []byte(val))
	if err != nil {
		w.fail("put "+name, err)
		return
	}
	w.ackVersion("put", name, val, c.GetVersion())
	w.m.mu.Lock()
	w.m.credNames = append(w.m.credNames, name)
	w.m.mu.Unlock()
}

// ackVersion records that op's acknowledged answer made val version v of credential name.
func (w *crashWorker) ackVersion(op, name, val string, v uint64) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	cs := w.m.cred(name)
	cs.values[v] = val
	cs.acked = max(cs.acked, v)
	w.m.acked[op]++
	w.m.ackedRPCs++
}

func (w *crashWorker) rotate(ctx context.Context) {
	w.m.mu.Lock()
	name := w.m.credNames[w.rng.IntN(len(w.m.credNames))]
	val := w.value()
	w.m.cred(name).tried[val] = true
	w.m.mu.Unlock()
	if name == "scavio_api_key" {
		w.fake.AddKey(val) // the upstream knows the key before brokerd may use it
	}
	c, err := w.admin.RotateCredential(ctx, name, []byte(val))
	if err != nil {
		w.fail("rotate "+name, err)
		return
	}
	w.ackVersion("rotate", name, val, c.GetVersion())
}

// rollback stores the value of an older kept version as a new version. It may be refused when a
// concurrent rotation pruned that version: a clean refusal, not a failure.
func (w *crashWorker) rollback(ctx context.Context) {
	w.m.mu.Lock()
	name := w.m.credNames[w.rng.IntN(len(w.m.credNames))]
	cs := w.m.cred(name)
	if cs.acked < 2 {
		w.m.mu.Unlock()
		return
	}
	to := cs.acked - 1
	w.m.mu.Unlock()
	resp, err := w.admin.RollbackCredential(ctx, name, to)
	if err != nil {
		var ce *client.Error
		if errors.As(err, &ce) && !w.killed.Load() && (ce.Code == codes.NotFound || ce.Code == codes.FailedPrecondition || ce.Code == codes.InvalidArgument) {
			w.m.mu.Lock()
			w.m.acked["rollback refused (version pruned)"]++
			w.m.ackedRPCs++
			w.m.mu.Unlock()
			return
		}
		w.fail(fmt.Sprintf("rollback %s to v%d", name, to), err)
		return
	}
	v := resp.GetCredential().GetVersion()
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if val, ok := cs.values[to]; ok {
		cs.values[v] = val
	}
	cs.acked = max(cs.acked, v)
	w.m.acked["rollback"]++
	w.m.ackedRPCs++
}

func (w *crashWorker) policy(ctx context.Context) {
	w.m.mu.Lock()
	name := w.m.credNames[w.rng.IntN(len(w.m.credNames))]
	pw := &policyWrite{maxAge: time.Duration(100000+w.cycle*1000+w.id*100+w.n%100)*time.Hour + time.Duration(w.rng.IntN(3600))*time.Second, start: time.Now()}
	w.m.policies[name] = append(w.m.policies[name], pw)
	w.m.mu.Unlock()
	if _, err := w.admin.SetRotationPolicy(ctx, name, &pb.RotationPolicy{MaxAge: durationpb.New(pw.maxAge)}); err != nil {
		w.fail("policy "+name, err)
		return
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	pw.ack, pw.acked = time.Now(), true
	w.m.acked["policy"]++
	w.m.ackedRPCs++
}

// rekey rotates the data keyset and re-encrypts every version. Rekeys are serialised in brokerd; a
// refusal because a master keyset re-wrap (SIGHUP) changed the keyset meanwhile is documented.
func (w *crashWorker) rekey(ctx context.Context) {
	rw := &rekeyWrite{start: time.Now()}
	w.m.mu.Lock()
	w.m.rekeys = append(w.m.rekeys, rw)
	w.m.mu.Unlock()
	resp, err := w.admin.Rekey(ctx)
	if err != nil {
		if !w.killed.Load() && strings.Contains(err.Error(), "changed meanwhile") {
			w.m.mu.Lock()
			rw.refused = true
			w.m.acked["rekey refused (concurrent re-wrap)"]++
			w.m.ackedRPCs++
			w.m.mu.Unlock()
			return
		}
		w.fail("rekey", err)
		return
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	rw.ack, rw.acked, rw.primary = time.Now(), true, resp.GetNewPrimaryKeyId()
	w.m.acked["rekey"]++
	w.m.ackedRPCs++
}

func (w *crashWorker) mint(ctx context.Context) {
	req := &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(time.Hour), Label: fmt.Sprintf("crash-%d-%d", w.cycle, w.id)}
	if w.rng.IntN(2) == 0 {
		req.MaxUses = 5
	}
	resp, err := w.admin.MintToken(ctx, req)
	if err != nil {
		w.fail("mint", err)
		return
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.m.tokens[resp.GetId()] = &tokState{token: resp.GetToken(), maxUses: req.MaxUses}
	w.m.tokenIDs = append(w.m.tokenIDs, resp.GetId())
	w.m.acked["mint"]++
	w.m.ackedRPCs++
}

func (w *crashWorker) revoke(ctx context.Context) {
	w.m.mu.Lock()
	if len(w.m.tokenIDs) == 0 {
		w.m.mu.Unlock()
		return
	}
	id := w.m.tokenIDs[w.rng.IntN(len(w.m.tokenIDs))]
	w.m.tokens[id].revokeTried = true
	w.m.mu.Unlock()
	info, err := w.admin.RevokeToken(ctx, id)
	if err != nil {
		w.fail("revoke "+id, err)
		return
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	if !info.GetRevoked() {
		w.m.unexpected = append(w.m.unexpected, "revoke "+id+" acknowledged a token that is not revoked")
	}
	w.m.tokens[id].revokeAcked = true
	w.m.acked["revoke"]++
	w.m.ackedRPCs++
}

// searchOnce spends one use of a use-limited token: a durable write (the use count) before the
// upstream call.
func (w *crashWorker) searchOnce(ctx context.Context) {
	w.m.mu.Lock()
	id := w.m.searchIDs[w.rng.IntN(len(w.m.searchIDs))]
	w.m.mu.Unlock()
	if _, err := w.search[id].Search(ctx, &pb.SearchRequest{Query: fmt.Sprintf("crash %d %d", w.id, w.n)}); err != nil {
		w.fail("search", err)
		return
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.m.tokens[id].usesAcked++
	w.m.acked["search(use count)"]++
	w.m.ackedRPCs++
}

func TestCrashConsistency(t *testing.T) {
	kills := crashKills()
	e := newEnv(t)
	e.startDaemon(t)
	m := newCrashModel()

	// Setup (acknowledged like any other write): the upstream key, an unlimited token for the
	// post-restart search, and use-limited tokens the workers spend.
	baseTok, _ := e.setup(t)
	m.cred("scavio_api_key").values[1] = itKey
	m.cred("scavio_api_key").tried[itKey] = true
	m.creds["scavio_api_key"].acked = 1
	m.credNames = append(m.credNames, "scavio_api_key")
	admin := e.client(t)
	for range 3 {
		resp, err := admin.MintToken(context.Background(), &pb.MintTokenRequest{Tools: []string{"web_search"}, Ttl: durationpb.New(2 * time.Hour), MaxUses: 1 << 40, Label: "crash-uses"})
		if err != nil {
			t.Fatal(err)
		}
		m.tokens[resp.GetId()] = &tokState{token: resp.GetToken(), maxUses: 1 << 40}
		m.searchIDs = append(m.searchIDs, resp.GetId())
	}
	admin.Close()

	const workers = 6
	searchTokens := map[string]string{} // id -> token, read without the model's lock below
	for _, id := range m.searchIDs {
		searchTokens[id] = m.tokens[id].token
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 8))
	var kekRewraps, kekRewrapsAcked int
	start := time.Now()
	for cycle := 1; cycle <= kills; cycle++ {
		ctx, cancel := context.WithCancel(context.Background())
		var killed atomic.Bool
		var wg sync.WaitGroup
		var clients []*client.Client
		for i := range workers {
			ac, err := client.New(e.socket)
			if err != nil {
				t.Fatal(err)
			}
			clients = append(clients, ac)
			w := &crashWorker{id: i, cycle: cycle, m: m, admin: ac, search: map[string]*client.Client{}, fake: e.fake, killed: &killed,
				rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))}
			for id, tok := range searchTokens {
				sc, err := client.New(e.socket, client.WithToken(tok))
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, sc)
				w.search[id] = sc
			}
			wg.Add(1)
			go func() { defer wg.Done(); w.run(ctx) }()
		}

		time.Sleep(time.Duration(150+rng.IntN(750)) * time.Millisecond)
		// Every third cycle, rotate the master keyset and SIGHUP just before the kill, so some
		// kills land in the middle of re-wrapping the database's keysets.
		var newKEK uint32
		if cycle%3 == 0 {
			next := e.keyset + ".next"
			id, err := store.RotateMasterKeyset(e.keyset, next)
			if err != nil {
				t.Fatalf("rotate master keyset: %v", err)
			}
			if err := os.Rename(next, e.keyset); err != nil {
				t.Fatal(err)
			}
			newKEK = id
			kekRewraps++
			e.daemon.Process.Signal(syscall.SIGHUP)
			// Half the time kill within the re-wrap (it waits for a running rekey), half the time
			// after it has likely finished.
			wait := time.Duration(rng.IntN(150)) * time.Millisecond
			if rng.IntN(2) == 0 {
				wait = time.Duration(500+rng.IntN(1500)) * time.Millisecond
			}
			time.Sleep(wait)
		}
		killed.Store(true)
		e.stop(t, syscall.SIGKILL)
		cancel()
		wg.Wait()
		for _, c := range clients {
			c.Close()
		}
		rewrapAcked := newKEK != 0 && strings.Contains(e.stderr.String(), "master keyset reloaded")
		if rewrapAcked {
			kekRewrapsAcked++
		}

		if problems, lost := e.checkAfterCrash(m, newKEK, rewrapAcked); len(problems) > 0 {
			t.Fatalf("cycle %d: %d acknowledged writes lost; after the kill:\n%s\nbrokerd log:\n%s", cycle, lost, strings.Join(problems, "\n"), e.stderr.String())
		}

		e.startDaemon(t)
		r := e.search(t, baseTok, "after kill "+strconv.Itoa(cycle)).ok(t)
		if !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
			t.Fatalf("cycle %d: search after restart: %s", cycle, r.stdout)
		}
		if r := e.ctl(t, "", "audit", "verify").ok(t); !strings.Contains(r.stdout, "audit log OK") {
			t.Fatalf("cycle %d: brokerctl audit verify: %s", cycle, r.stdout)
		}
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, e.stderr.String())
	}
	if problems, lost := e.checkAfterCrash(m, 0, false); len(problems) > 0 {
		t.Fatalf("after the final clean stop: %d lost:\n%s", lost, strings.Join(problems, "\n"))
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.unexpected) > 0 {
		t.Errorf("%d unexpected errors while brokerd was up, e.g.:\n%s", len(m.unexpected), strings.Join(m.unexpected, "\n"))
	}
	ops := make([]string, 0, len(m.acked))
	for op, n := range m.acked {
		ops = append(ops, fmt.Sprintf("%s=%d", op, n))
	}
	slices.Sort(ops)
	t.Logf("CRASH RESULT: kills=%d writes_acknowledged=%d (%s) writes_lost=0 cut_off_by_kill=%d kek_rewraps=%d (completed before kill: %d) duration=%s db=%d bytes",
		kills, m.totalAcked(), strings.Join(ops, " "), m.unknown, kekRewraps, kekRewrapsAcked, time.Since(start).Round(time.Second), fileSize(e.db))
}

// checkAfterCrash checks the database offline (brokerd is dead): the file first with bbolt alone,
// read-only, then every acknowledged write through the store. It returns what is wrong and how
// many acknowledged writes are lost.
func (e *env) checkAfterCrash(m *crashModel, newKEK uint32, rewrapAcked bool) (problems []string, lost int) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if err := boltCheckReadOnly(e.db); err != nil {
		bad("%v", err)
		return problems, 0
	}
	if newKEK != 0 {
		u, err := store.InspectKeys(e.db)
		if err != nil {
			bad("inspect keys: %v", err)
		} else if rewrapAcked && !slices.Equal(u.MasterKeyIDs, []uint32{newKEK}) {
			bad("brokerd logged the re-wrap under master key %d, but the file's keysets are wrapped under %v", newKEK, u.MasterKeyIDs)
		}
	}
	kek, err := store.LoadMasterKeyset(e.keyset)
	if err != nil {
		bad("master keyset: %v", err)
		return problems, 0
	}
	st, err := store.Open(e.db, kek, store.Options{})
	if err != nil {
		bad("open the database after the kill: %v", err)
		return problems, 0
	}
	defer st.Close()
	if err := st.Check(); err != nil {
		bad("Store.Check: %v", err)
	}
	av, err := st.VerifyAudit()
	if err != nil || !av.OK {
		bad("Store.VerifyAudit: %v ok=%v bad=%d %s", err, av.OK, av.BadSeq, av.Problem)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if av.Checked < m.ackedRPCs {
		bad("the audit log has %d records but %d calls were acknowledged (each is audited before its answer)", av.Checked, m.ackedRPCs)
	}
	// Every stored credential is one we sent, whole: its current version decrypts to a value that
	// was sent for that name, and to exactly the acknowledged value when that version was acked.
	creds, err := st.ListCredentials()
	if err != nil {
		bad("list credentials: %v", err)
	}
	stored := map[string]bool{}
	for _, c := range creds {
		stored[c.Name] = true
		cs, ok := m.creds[c.Name]
		if !ok {
			bad("credential %q was never written by a client", c.Name)
			continue
		}
		val, v, err := st.LoadCredential(c.Name)
		if err != nil {
			bad("credential %q: %v (half-applied?)", c.Name, err)
			continue
		}
		if v < cs.acked {
			lost++
			bad("credential %q is at version %d, but version %d was acknowledged", c.Name, v, cs.acked)
		}
		if want, ok := cs.values[v]; ok && want != string(val) {
			bad("credential %q v%d holds another value than the acknowledged one", c.Name, v)
		} else if !cs.tried[string(val)] {
			bad("credential %q v%d holds a value no client sent", c.Name, v)
		}
	}
	// Every kept version (current, previous, pending) decrypts under the stored keyset: a rekey or
	// a rotation cut off by the kill left nothing under a deleted key.
	for _, c := range creds {
		_, versions, err := st.History(c.Name)
		if err != nil {
			bad("credential %q history: %v", c.Name, err)
			continue
		}
		for _, v := range versions {
			if _, err := st.LoadCredentialVersion(c.Name, v.Version); err != nil {
				bad("credential %q v%d (%s) does not decrypt: %v", c.Name, v.Version, v.State, err)
			}
		}
	}
	// Policies: the stored one was written by some client; none acknowledged before another
	// acknowledged write started may win over it.
	for name, writes := range m.policies {
		var lastAckedStart time.Time
		anyAcked := false
		for _, pw := range writes {
			if pw.acked {
				anyAcked = true
				if pw.start.After(lastAckedStart) {
					lastAckedStart = pw.start
				}
			}
		}
		c, err := st.GetCredential(name)
		if err != nil {
			bad("credential %q (policy): %v", name, err)
			continue
		}
		if c.Policy == nil {
			if anyAcked {
				lost++
				bad("credential %q: a policy change was acknowledged but no policy is stored", name)
			}
			continue
		}
		idx := slices.IndexFunc(writes, func(pw *policyWrite) bool { return pw.maxAge == c.Policy.MaxAge })
		switch {
		case idx < 0:
			bad("credential %q: stored policy max_age %s was never sent", name, c.Policy.MaxAge)
		case writes[idx].acked && writes[idx].ack.Before(lastAckedStart):
			lost++
			bad("credential %q: the stored policy is an older acknowledged one; a later acknowledged change was lost", name)
		}
	}
	// Rekey: if the most recently started rekey was acknowledged, every version is under its
	// primary key and no rekey is left half-done.
	if n := len(m.rekeys); n > 0 {
		last := m.rekeys[n-1]
		for _, rw := range m.rekeys {
			if rw.start.After(last.start) {
				last = rw
			}
		}
		// brokerd serialises rekeys in its own order, not the clients' start order: a rekey
		// started earlier but still running when the last one started (or cut off by the kill)
		// may have run after it. Then the stored primary is the last one's or one of those, and a
		// cut-off rekey may have left its marker for the next start to finish.
		var concurrent []*rekeyWrite
		for _, rw := range m.rekeys {
			if rw != last && !rw.refused && (!rw.acked || rw.ack.After(last.start)) {
				concurrent = append(concurrent, rw)
			}
		}
		if last.acked && len(concurrent) > 0 {
			allowed, known := map[uint32]bool{last.primary: true}, true
			for _, rw := range concurrent {
				if rw.acked {
					allowed[rw.primary] = true
				} else {
					known = false // cut off by the kill: its primary was never reported
				}
			}
			u, err := st.Keys()
			switch {
			case err != nil:
				bad("keys: %v", err)
			case known && !allowed[u.DataPrimaryKeyID]:
				lost++
				bad("the stored primary data key %d is none of the acknowledged rekeys' (%v)", u.DataPrimaryKeyID, allowed)
			case u.RekeyTarget == 0:
				for id, n := range u.VersionsByKey {
					if id != u.DataPrimaryKeyID && n > 0 {
						bad("no rekey is left half-done, yet %d versions are under data key %d, not the primary %d", n, id, u.DataPrimaryKeyID)
					}
				}
			}
		}
		if last.acked && len(concurrent) == 0 {
			u, err := st.Keys()
			switch {
			case err != nil:
				bad("keys: %v", err)
			case u.RekeyTarget != 0:
				bad("an acknowledged rekey left a rekey marker (target %d)", u.RekeyTarget)
			case u.DataPrimaryKeyID != last.primary:
				lost++
				bad("acknowledged rekey made data key %d primary, but the stored primary is %d", last.primary, u.DataPrimaryKeyID)
			default:
				for id, n := range u.VersionsByKey {
					if id != last.primary && n > 0 {
						bad("after an acknowledged rekey to %d, %d versions are under data key %d", last.primary, n, id)
					}
				}
			}
		}
	}
	for name, cs := range m.creds {
		if cs.acked > 0 && !stored[name] {
			lost++
			bad("acknowledged credential %q is missing", name)
		}
	}
	for id, ts := range m.tokens {
		tok, err := st.GetToken(id)
		if err != nil {
			lost++
			bad("acknowledged token %s: %v", id, err)
			continue
		}
		switch {
		case ts.revokeAcked && !tok.Revoked:
			lost++
			bad("token %s: revocation was acknowledged but it is not revoked", id)
		case !ts.revokeTried && tok.Revoked:
			bad("token %s is revoked but nobody revoked it", id)
		case tok.Revoked && tok.RevokedAt.IsZero():
			bad("token %s is revoked without a time (half-applied)", id)
		case tok.Uses < ts.usesAcked:
			lost++
			bad("token %s counts %d uses but %d searches were acknowledged", id, tok.Uses, ts.usesAcked)
		case tok.MaxUses != ts.maxUses || (tok.MaxUses > 0 && tok.Uses > tok.MaxUses):
			bad("token %s: uses %d of max %d, minted with max %d", id, tok.Uses, tok.MaxUses, ts.maxUses)
		}
	}
	// Every token record decodes (unacknowledged mints may be there too, but whole), and none
	// exists without the OK MintToken record committed in the same transaction.
	minted := map[string]bool{}
	for after := uint64(0); ; {
		recs, err := st.ListAudit(after, time.Time{}, 1000)
		if err != nil {
			bad("list audit: %v", err)
			break
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if strings.HasSuffix(r.Method, "/MintToken") && r.Code == "OK" {
				minted[r.TokenID] = true
			}
		}
		after = recs[len(recs)-1].Seq
	}
	n := 0
	if err := st.ForEachToken(func(tok *store.Token) error {
		n++
		if !minted[tok.ID] {
			bad("token %s is stored without an OK MintToken audit record", tok.ID)
		}
		return nil
	}); err != nil {
		bad("token records: %v", err)
	}
	if n < len(m.tokens) {
		bad("%d token records, %d acknowledged", n, len(m.tokens))
	}
	return problems, lost
}

// The crash check's own sanity: a model that expects writes that never happened must be reported
// as lost, so a green crash run means something.
func TestCrashCheckDetectsLoss(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	e.setup(t)
	if err := e.stop(t, syscall.SIGKILL); err == nil {
		t.Fatal("SIGKILL: brokerd exited 0")
	}
	m := newCrashModel()
	m.cred("scavio_api_key").acked = 7 // pretend rotations up to v7 were acknowledged
	m.cred("scavio_api_key").tried[itKey] = true
	m.cred("never_stored").acked = 1
	m.tokens["00000000000000000000000000000000"] = &tokState{}
	m.ackedRPCs = 1 << 20
	// A token written behind the audit log's back (no MintToken record) is a problem, not a loss.
	kek, err := store.LoadMasterKeyset(e.keyset)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(e.db, kek, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ghost := store.Token{ID: "0123456789abcdef", SecretHash: make([]byte, 32), Tools: []string{"web_search"}, ExpiresAt: time.Now().Add(time.Hour)}
	if err := st.PutToken(ghost); err != nil {
		t.Fatal(err)
	}
	st.Close()
	problems, lost := e.checkAfterCrash(m, 0, false)
	if lost != 3 || len(problems) != 5 {
		t.Fatalf("lost=%d problems:\n%s", lost, strings.Join(problems, "\n"))
	}
}
