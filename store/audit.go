package store

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// The audit log is a hash chain in the audit bucket: each record's value is
// <Tink MAC of body> || body, and each body holds the MAC of the record before it, so editing,
// removing or reordering a record breaks verification at that record. The MAC key is a Tink
// HMAC-SHA256 keyset stored in meta/audit_keyset encrypted under the master keyset (like the data
// keyset). meta/audit_head holds the newest record's seq and MAC (so a removed tail is detected)
// and meta/audit_anchor, after retention pruned the oldest records, the seq and previous MAC the
// remaining chain starts from; both are MACed.

var (
	bucketAudit    = []byte("audit")
	keyAuditKeyset = []byte("audit_keyset")
	keyAuditHead   = []byte("audit_head")
	keyAuditAnchor = []byte("audit_anchor")
	auditKeysetAAD = []byte("credbroker/audit-keyset")
)

// ErrAuditUnavailable reports that an audit record could not be made durable; the call it
// describes must fail (fail closed).
var ErrAuditUnavailable = errors.New("audit log unavailable")

// AuditRecord is one audited call. It never holds a secret, a token or a raw query.
type AuditRecord struct {
	Seq               uint64    `json:"seq"`
	Time              time.Time `json:"time"`
	PeerKnown         bool      `json:"peer_known"`
	UID               uint32    `json:"uid"`
	GID               uint32    `json:"gid"`
	PID               int32     `json:"pid"`
	TokenID           string    `json:"token_id,omitempty"`
	Method            string    `json:"method"`
	Tool              string    `json:"tool,omitempty"`
	Code              string    `json:"code"`
	LatencyMicros     int64     `json:"latency_us"`
	Credential        string    `json:"credential,omitempty"`
	CredentialVersion uint64    `json:"credential_version,omitempty"`
	QueryLen          int       `json:"query_len,omitempty"`
	QueryMAC          string    `json:"query_mac,omitempty"`
	Event             string    `json:"event,omitempty"`
	Credits           uint64    `json:"credits,omitempty"`
	CreditsSaved      uint64    `json:"credits_saved,omitempty"`
	TokenLabel        string    `json:"token_label,omitempty"`
	PIDFD             bool      `json:"pidfd,omitempty"`
	Exe               string    `json:"exe,omitempty"`
	Comm              string    `json:"comm,omitempty"`
	// Workload is the registration a FetchToken matched (or the process-bound token's).
	Workload string `json:"workload,omitempty"`
	// Count is how many refusals a coalesced record stands for (broker/refusals.go); 0 for a
	// record of one call. omitempty keeps the bodies, and so the MACs, of older records unchanged.
	Count uint64 `json:"count,omitempty"`
	Prev  []byte `json:"prev"`
}

// chainPoint is a position in the chain: the seq of a record and the MAC it must follow.
type chainPoint struct {
	Seq  uint64 `json:"seq"`
	Prev []byte `json:"prev"`
	// RecordMACs says that a brokerd sealing records (schema 2, records.go) wrote this point.
	// The head is MACed and cannot be removed unnoticed, so it is what proves that a database
	// whose schema version says 1 was put back (checkSchemaNotPutBack); writePoint sets it.
	RecordMACs bool `json:"record_macs,omitempty"`
}

func auditKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// auditWriter group-commits audit appends: one goroutine writes every record that is waiting in
// one transaction, so N concurrent calls cost one fsync, not N, and a lone call is not delayed by a
// batching timer.
type auditWriter struct {
	db    *bolt.DB
	guard *commitGuard // the store's: a failed commit that landed anyway counts as committed
	mac   tink.MAC
	// rmac computes mac's tags with one reused HMAC state, and tagBuf is its output: both belong
	// to the writer goroutine (sealRecord).
	rmac   *recordMAC
	tagBuf []byte
	// qmacs holds *queryMAC for QueryDigest, which every Search calls from its own goroutine: a
	// pooled HMAC state instead of the new one (and ~9 allocations) Tink's primitive makes per call.
	qmacs sync.Pool
	reqs  chan *auditReq
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once

	// lastSeq and lastMAC are owned by the writer goroutine after openAudit. After a failed commit
	// (failing) they may be wrong: bbolt can fail a commit after its meta page was written (the
	// fdatasync after it failed), and that transaction is then live. So the next commit takes the
	// head from the database instead, and never writes over records that did land.
	lastSeq uint64
	lastMAC []byte
	// headSeq is lastSeq as of the last successful commit, for any goroutine: records sealed in
	// other transactions are stamped with it (records.go).
	headSeq atomic.Uint64

	onCommit     func(records int, took time.Duration, err error) // Options.OnAuditCommit
	onPrune      func(records int, took time.Duration, err error) // Options.OnAuditPrune
	onCheckpoint func(records int, took time.Duration, err error) // Options.OnAuditCheckpoint

	// jr is the audit journal (journal.go); nil when it could not be created (a full disk at the
	// first start): every group then commits to bbolt as before. ckSeq is the seq of the chain
	// head as the database holds it; pending are the records after it, lastSeq's included, that
	// are durable in the journal only. All three belong to the writer goroutine; pendView is
	// pending for readers (ScanAudit, NewestAudit), under pendMu, replaced (never truncated in
	// place) at a checkpoint so a reader's copy stays valid.
	jr         *journal
	ckSeq      uint64
	pending    []journalRecord
	frames     []byte // the group being written to the journal
	ckInterval time.Duration
	ckTimer    *time.Timer
	pendMu     sync.Mutex
	pendView   []journalRecord
	pendTx     int // the bbolt transaction of the last commitDB: pendView follows its head

	// fault, when set, makes appends fail: fault injection for tests of the fail-closed path.
	fault atomic.Pointer[error]
	// failing is set when a commit fails and cleared by the next one that succeeds; cause is
	// that failure (bbolt's error: errors.Is finds syscall.ENOSPC in it on a full disk).
	failing atomic.Bool
	cause   atomic.Pointer[error]

	// committed is closed (and replaced) after every commit that lands, and when the writer
	// stops: watchers of the log (WatchAudit) wait on it instead of polling, and reread the log
	// themselves, so a slow watcher costs the writer nothing.
	commitMu  sync.Mutex
	committed chan struct{}
}

type auditReq struct {
	rec AuditRecord
	// apply, when set, is the state change rec describes: it runs in the same transaction, just
	// before rec is appended, so the change is never durable without its record (and the pair
	// costs one commit). If it fails, the transaction is rolled back and the batch is committed
	// again without this request, which gets apply's error; its record is not written. seq is the
	// seq rec will be written at.
	apply func(tx *bolt.Tx, seq uint64) error
	// prune, when set, makes this a retention prune batch (PruneAudit) instead of an append:
	// the writer runs it in a transaction of its own between two group commits.
	prune *pruneReq
	// probe, when set, asks only whether a commit succeeds: it rides a group commit (or makes
	// one that rewrites the chain head) without adding a record. AuditHealthy sends it after a
	// failure, so the first call after the disk recovers is not refused on stale news.
	probe bool
	done  chan error
}

// pruneReq is one prune batch: delete up to max of the oldest records older than before.
type pruneReq struct {
	before time.Time
	max    int
	n      int // records deleted; set by the writer before it answers
}

// maxPruneBatch bounds the records one prune transaction deletes. Each batch runs on the audit
// writer between group commits, so a call's audit append waits behind at most one batch: a
// thousand deletions and an anchor write are a few milliseconds of bbolt work, where pruning
// 215k records in one transaction stalled a call for 3.4 s (issue 16). Smaller batches cost more
// commits (two fdatasyncs each) for the same prune; larger ones lengthen the worst wait.
const maxPruneBatch = 1000

// applyError is a request's apply failing inside a batch's transaction.
type applyError struct {
	req *auditReq
	err error
}

func (e *applyError) Error() string { return e.err.Error() }

const maxAuditBatch = 512

// readAuditKeyset unwraps the stored audit keyset.
func readAuditKeyset(kek tink.AEAD, encrypted []byte) (*keyset.Handle, error) {
	return keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(encrypted)), kek, auditKeysetAAD)
}

// openAudit loads or creates the audit MAC keyset and the chain head, and starts the writer.
func (s *Store) openAudit(kek tink.AEAD, opts Options) error {
	var encrypted []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		encrypted = bytes.Clone(tx.Bucket(bucketMeta).Get(keyAuditKeyset))
		return nil
	}); err != nil {
		return err
	}
	var h *keyset.Handle
	if encrypted == nil {
		var err error
		if h, err = keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate()); err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, auditKeysetAAD); err != nil {
			return err
		}
		if err := s.db.Update(func(tx *bolt.Tx) error {
			if _, err := tx.CreateBucketIfNotExists(bucketAudit); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(keyAuditKeyset, buf.Bytes())
		}); err != nil {
			return err
		}
	} else {
		var err error
		if h, err = readAuditKeyset(kek, encrypted); err != nil {
			return ErrWrongMasterKey
		}
	}
	m, err := mac.New(h)
	if err != nil {
		return err
	}
	w := &auditWriter{db: s.db, guard: s.guard, mac: m, rmac: newRecordMAC(h, m), onCommit: opts.OnAuditCommit, onPrune: opts.OnAuditPrune,
		onCheckpoint: opts.OnAuditCheckpoint, reqs: make(chan *auditReq, maxAuditBatch),
		quit: make(chan struct{}), done: make(chan struct{}), committed: make(chan struct{}), ckInterval: opts.AuditCheckpointInterval}
	if w.ckInterval <= 0 {
		w.ckInterval = DefaultAuditCheckpointInterval
	}
	w.qmacs.New = func() any { return &queryMAC{rm: newRecordMAC(h, m)} }
	var head *chainPoint
	if err := s.db.View(func(tx *bolt.Tx) (err error) {
		head, err = w.readPoint(tx, keyAuditHead)
		return err
	}); err != nil {
		return err
	}
	if head == nil {
		// A log never written to has no head yet; give it one (seq 0) so that from now on a
		// missing head always means a removed one. Records or an anchor without a head mean
		// the head was deleted, perhaps with the newest records: starting would write new
		// records over the old sequence numbers, so refuse.
		if err := s.db.Update(func(tx *bolt.Tx) error {
			if auditHasHistory(tx) {
				return fmt.Errorf("%w: the audit log's chain head is missing but records or a retention anchor exist (removed?); restore the database from a backup", ErrCorrupt)
			}
			return w.writePoint(tx, keyAuditHead, chainPoint{Seq: 0})
		}); err != nil {
			return err
		}
		head = &chainPoint{Seq: 0}
	} else if !head.RecordMACs {
		// A head written before heads said so: say it now, so that putting the schema version
		// back is caught from this start on, not only after the next checkpoint. Best effort: a
		// full disk must not stop the start (the next commit of the head writes it anyway).
		p := *head
		_ = s.db.Update(func(tx *bolt.Tx) error { return w.writePoint(tx, keyAuditHead, p) })
	}
	if !opts.NoJournal {
		if err := w.openJournal(s.db.Path(), head, opts.NoSync); err != nil {
			if errors.Is(err, ErrTampered) {
				err = fmt.Errorf("%w%s", err, journalTamperedAdvice)
			}
			return err
		}
	}
	w.lastSeq, w.lastMAC = head.Seq, head.Prev
	w.ckSeq = head.Seq
	if n := len(w.pending); n > 0 {
		// The journal's records could not be moved into the database (openJournal): they follow
		// its head, for the writer and for readers (auditTail), until a commit moves them.
		w.lastSeq, w.lastMAC = w.pending[n-1].seq, w.pending[n-1].tag
		w.pendView = w.pending
		w.pendTx = int(s.LastTxID())
	}
	w.headSeq.Store(w.lastSeq)
	w.ckTimer = time.NewTimer(time.Hour)
	w.ckTimer.Stop()
	s.audit = w
	go w.run()
	return nil
}

// journalTamperedAdvice ends every refusal of a journal brokerd did not write (openAudit adds it):
// what to do.
const journalTamperedAdvice = "; brokerd changed nothing: restore the database and its audit journal (together) from a backup"

// openJournal opens the audit journal and moves the records it holds after head (written since
// the last checkpoint before brokerd stopped) into the database, moving head with them. A journal
// that cannot be created (a full disk) is done without: every commit then goes to bbolt.
func (w *auditWriter) openJournal(dbPath string, head *chainPoint, noSync bool) error {
	jr, content, err := openJournal(dbPath, noSync)
	if err != nil {
		if errors.Is(err, ErrTampered) || errors.Is(err, ErrFileOwner) {
			return err
		}
		if _, serr := os.Lstat(JournalPath(dbPath)); serr == nil {
			return err // it exists but cannot be read: it may hold records, so do not start without them
		}
		return nil // never created (no space?): commit to bbolt only
	}
	recs, err := w.recoverJournal(jr.path, content, *head)
	if err != nil {
		jr.close()
		return err
	}
	if len(recs) > 0 {
		if err := w.guard.update(w.db.Update, func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketAudit)
			if err != nil {
				return err
			}
			b.FillPercent = 0.95
			for _, r := range recs {
				if err := b.Put(auditKey(r.seq), r.val); err != nil {
					return err
				}
			}
			last := recs[len(recs)-1]
			return w.writePoint(tx, keyAuditHead, chainPoint{Seq: last.seq, Prev: last.tag})
		}); err != nil {
			if !outOfSpace(err) || errors.Is(err, ErrOutcomeUnknown) {
				jr.close()
				return fmt.Errorf("replaying %d records of the audit journal: %w", len(recs), err)
			}
			// The disk is full (the journal took these records while it was: it never grows).
			// Start as brokerd was when it stopped: the records durable in the journal only,
			// which no group overwrites while the log is failing (every commit then goes to the
			// database, with them first), so the first commit after space returns moves them.
			// Refusing to start would keep brokerd down until an operator freed space.
			w.pending = recs
			w.fail(fmt.Errorf("replaying %d records of the audit journal: %w", len(recs), err))
			w.jr = jr
			return nil
		}
		last := recs[len(recs)-1]
		*head = chainPoint{Seq: last.seq, Prev: last.tag}
	}
	w.jr = jr
	return nil
}

// outOfSpace reports whether err is a write refused for want of space (a full disk, a quota).
func outOfSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// auditHasHistory reports whether the audit log has any record or a retention anchor.
func auditHasHistory(tx *bolt.Tx) bool {
	if b := tx.Bucket(bucketAudit); b != nil {
		if k, _ := b.Cursor().First(); k != nil {
			return true
		}
	}
	return tx.Bucket(bucketMeta).Get(keyAuditAnchor) != nil
}

// readPoint reads a MACed chain point from meta; nil if absent.
func (w *auditWriter) readPoint(tx *bolt.Tx, key []byte) (*chainPoint, error) {
	raw := tx.Bucket(bucketMeta).Get(key)
	if raw == nil {
		return nil, nil
	}
	tag, body, err := w.split(raw)
	if err != nil {
		return nil, err
	}
	if err := w.mac.VerifyMAC(tag, append([]byte(key), body...)); err != nil {
		return nil, fmt.Errorf("%w: %s does not verify", ErrCorrupt, key)
	}
	var p chainPoint
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, key, err)
	}
	return &p, nil
}

func (w *auditWriter) writePoint(tx *bolt.Tx, key []byte, p chainPoint) error {
	p.RecordMACs = true // this binary opens only schema-2 databases (migrate runs before openAudit)
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	tag, err := w.mac.ComputeMAC(append([]byte(key), body...))
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMeta).Put(key, w.join(tag, body))
}

// sealRecord encodes rec and returns the value stored for it, <tag length><tag><body>, and its
// tag (which aliases the value). It runs on the writer goroutine only (w.rmac is not shareable).
func (w *auditWriter) sealRecord(rec *AuditRecord) (val, tag []byte, err error) {
	n := w.rmac.size()
	if n < 0 || n > 255 {
		body, err := appendAuditRecord(nil, rec)
		if err != nil {
			return nil, nil, err
		}
		if tag, err = w.mac.ComputeMAC(body); err != nil {
			return nil, nil, err
		}
		return w.join(tag, body), tag, nil
	}
	// One allocation: the tag's room first, then the body, then the tag computed over the body
	// into its room.
	val = make([]byte, 1+n, 1+n+auditBodySize(rec))
	val[0] = byte(n)
	if val, err = appendAuditRecord(val, rec); err != nil {
		return nil, nil, err
	}
	if w.tagBuf, err = w.rmac.appendMAC(w.tagBuf[:0], val[1+n:]); err != nil {
		return nil, nil, err
	}
	copy(val[1:1+n], w.tagBuf)
	return val, val[1 : 1+n : 1+n], nil
}

// auditBodySize is about the length of rec's body, a little more so it is seldom outgrown: the
// names and fixed parts (under 400 bytes), the strings, and prev in base64.
func auditBodySize(rec *AuditRecord) int {
	return 400 + len(rec.TokenID) + len(rec.Method) + len(rec.Tool) + len(rec.Code) + len(rec.Credential) +
		len(rec.QueryMAC) + len(rec.Event) + len(rec.TokenLabel) + len(rec.Exe) + len(rec.Comm) + len(rec.Workload) +
		(len(rec.Prev)+2)/3*4
}

// A stored value is <1-byte tag length><tag><body>.
func (w *auditWriter) join(tag, body []byte) []byte {
	out := make([]byte, 0, 1+len(tag)+len(body))
	out = append(out, byte(len(tag)))
	out = append(out, tag...)
	return append(out, body...)
}

func (w *auditWriter) split(raw []byte) (tag, body []byte, err error) {
	if len(raw) < 1 || len(raw) < 1+int(raw[0]) {
		return nil, nil, fmt.Errorf("%w: short audit value", ErrCorrupt)
	}
	n := int(raw[0])
	return raw[1 : 1+n], raw[1+n:], nil
}

func (w *auditWriter) run() {
	// Deferred calls run last first: done is closed before the watchers wake, so they see the
	// store closing instead of waiting for a commit that never comes.
	defer w.wake()
	defer close(w.done)
	defer w.jr.close()
	for {
		var first *auditReq
		select {
		case first = <-w.reqs:
		case <-w.ckTimer.C:
			w.checkpoint()
			continue
		case <-w.quit:
			// Fail whatever is still queued: the store is closing. Then move the journal into
			// the database, so a stopped brokerd's file holds every record (if this fails, the
			// next start replays the journal).
			for {
				select {
				case r := <-w.reqs:
					r.done <- fmt.Errorf("%w: store closed", ErrAuditUnavailable)
				default:
					w.ckTimer.Stop()
					w.checkpoint()
					return
				}
			}
		}
		// A prune batch ends the gathering: the appends queued before it commit first, then it
		// runs alone, and appends that arrive meanwhile queue ahead of the next prune batch
		// (PruneAudit sends it only when this one is answered).
		var batch []*auditReq
		var prune *auditReq
		if first.prune != nil {
			prune = first
		} else {
			batch = []*auditReq{first}
		drain:
			for len(batch) < maxAuditBatch {
				select {
				case r := <-w.reqs:
					if r.prune != nil {
						prune = r
						break drain
					}
					batch = append(batch, r)
				default:
					break drain
				}
			}
		}
		if len(batch) > 0 {
			w.commitAll(batch)
			if len(w.pending) >= journalCheckpointRecords || (w.jr != nil && w.jr.full()) {
				w.checkpoint()
			}
		}
		if prune != nil {
			// Records in the journal are in reach of a prune once in the database.
			w.checkpoint()
			prune.done <- w.pruneBatch(prune.prune)
		}
	}
}

// commitAll commits batch and answers every request in it. A request whose apply fails gets that
// error and is left out of a fresh attempt with the rest (bbolt's DB.Batch does the same).
func (w *auditWriter) commitAll(batch []*auditReq) {
	for len(batch) > 0 {
		start := time.Now()
		err := w.commit(batch)
		if failed, ok := errors.AsType[*applyError](err); ok {
			failed.req.done <- failed.err
			batch = slices.DeleteFunc(batch, func(r *auditReq) bool { return r == failed.req })
			continue
		}
		if w.onCommit != nil {
			records := len(batch)
			for _, r := range batch {
				if r.probe {
					records-- // a probe carries no record
				}
			}
			w.onCommit(records, time.Since(start), err)
		}
		for _, r := range batch {
			r.done <- err
		}
		return
	}
}

// commit makes batch durable as consecutive chain records: in the journal when no request in it
// changes state (or probes) and the log is not failing, else in one bbolt transaction. The
// in-memory head moves only if the write succeeds.
func (w *auditWriter) commit(batch []*auditReq) error {
	if f := w.fault.Load(); f != nil {
		w.fail(*f) // as a real failure would: the log stays failing until a commit succeeds
		return fmt.Errorf("%w: %v", ErrAuditUnavailable, *f)
	}
	if w.jr == nil || w.failing.Load() || w.guard.stopped.Load() {
		// Stopped: a commit of doubtful durability (landed.go) may be the checkpoint of records
		// that only the journal is sure to hold, so no group may start the journal over on top
		// of them; commitDB refuses (ErrSyncFailed) like every write until brokerd restarts.
		return w.commitDB(batch)
	}
	probes := 0
	for _, r := range batch {
		if r.apply != nil {
			return w.commitDB(batch) // the change and its record commit together
		}
		if r.probe {
			probes++
		}
	}
	if probes == len(batch) {
		if len(w.pending) == 0 {
			return nil // nothing to move into the database, and the last write succeeded
		}
		return w.commitDB(batch)
	}
	if probes > 0 {
		return w.commitDB(batch)
	}
	return w.commitJournal(batch)
}

// commitJournal seals batch into the chain and writes it to the journal with one fdatasync. A
// batch that does not fit checkpoints with it instead.
func (w *auditWriter) commitJournal(batch []*auditReq) error {
	seq, prev := w.lastSeq, w.lastMAC
	w.frames = w.frames[:0]
	recs := make([]journalRecord, 0, len(batch))
	for _, r := range batch {
		seq++
		r.rec.Seq, r.rec.Prev = seq, prev
		val, tag, err := w.sealRecord(&r.rec)
		if err != nil {
			return err
		}
		if len(val) > maxJournalFrame {
			// Recovery would read it as a torn length and drop it and every record after it.
			return w.commitDB(batch)
		}
		w.frames = appendFrame(w.frames, val)
		recs = append(recs, journalRecord{seq: seq, val: val, tag: tag})
		prev = tag
	}
	if !w.jr.fits(len(w.frames)) {
		return w.commitDB(batch)
	}
	if err := w.jr.write(w.frames); err != nil {
		w.fail(err)
		return fmt.Errorf("%w: audit journal: %w", ErrAuditUnavailable, err)
	}
	if len(w.pending) == 0 {
		w.ckTimer.Reset(w.ckInterval) // the oldest record waiting for a checkpoint
	}
	w.pending = append(w.pending, recs...)
	w.pendMu.Lock()
	w.pendView = append(w.pendView, recs...)
	w.pendMu.Unlock()
	w.lastSeq, w.lastMAC = seq, prev
	w.headSeq.Store(seq)
	w.wake()
	return nil
}

// checkpoint moves the journal's records into the database (a bbolt commit with no new record).
// On failure they stay in the journal, and the log is failing until a commit succeeds.
func (w *auditWriter) checkpoint() {
	if len(w.pending) == 0 {
		return
	}
	start := time.Now()
	n := len(w.pending)
	err := w.commitDB(nil)
	if w.onCheckpoint != nil {
		w.onCheckpoint(n, time.Since(start), err)
	}
}

// pendingView returns the records durable in the journal only, for a reader; they follow the
// database's head as of the call (a checkpoint after it moves them into the database).
func (w *auditWriter) pendingView() []journalRecord {
	_, recs := w.pendingSince()
	return recs
}

// pendingSince is pendingView with the bbolt transaction whose chain head they follow.
func (w *auditWriter) pendingSince() (txid int, recs []journalRecord) {
	w.pendMu.Lock()
	defer w.pendMu.Unlock()
	return w.pendTx, w.pendView
}

// errJournalMoved: a checkpoint moved the journal's records into the database while a reader's
// transaction was open, so they are in neither its view nor its copy of the journal: read again.
var errJournalMoved = errors.New("the audit journal moved into the database during the read")

// auditTail returns, inside the read transaction tx whose chain head is record head, the
// records durable in the journal only, which follow that head, or errJournalMoved when a
// checkpoint after tx began moved them out of reach. A checkpoint's commit is visible a moment
// before the writer empties the readers' view (pendMu), so a transaction begun in that moment
// finds the view's records in the database already (that commit held them all): they are
// skipped by seq. What is left follows the head unless the head was changed outside brokerd,
// which the caller's chain check reports.
func (w *auditWriter) auditTail(tx *bolt.Tx, head uint64) ([]journalRecord, error) {
	txid, recs := w.pendingSince()
	if tx.ID() < txid {
		return nil, errJournalMoved
	}
	for len(recs) > 0 && recs[0].seq <= head {
		recs = recs[1:]
	}
	return recs, nil
}

// viewAudit runs fn in a read transaction, again if a checkpoint raced it (auditTail): they
// happen about once a second, so the second attempt all but always succeeds.
func (s *Store) viewAudit(fn func(tx *bolt.Tx) error) error {
	var err error
	for range 100 {
		if err = s.db.View(fn); !errors.Is(err, errJournalMoved) {
			return err
		}
	}
	return err
}

// commitDB writes the journal's pending records and batch as consecutive chain records in one
// bbolt transaction, with the chain head, and starts the journal over.
func (w *auditWriter) commitDB(batch []*auditReq) error {
	seq, prev := w.lastSeq, w.lastMAC
	var txid int
	err := w.guard.update(w.db.Update, func(tx *bolt.Tx) error {
		txid = tx.ID()
		b, err := tx.CreateBucketIfNotExists(bucketAudit)
		if err != nil {
			return err
		}
		// Keys only ever grow: fill pages instead of splitting them half empty (bbolt's default
		// suits random inserts and would double the file's size per record).
		b.FillPercent = 0.95
		seq, prev = w.lastSeq, w.lastMAC
		pending := w.pending
		if w.failing.Load() {
			head, err := w.readPoint(tx, keyAuditHead)
			if err != nil {
				return err
			}
			if head == nil {
				return fmt.Errorf("%w: the audit log's chain head is missing; restore the database from a backup", ErrCorrupt)
			}
			if head.Seq != w.ckSeq {
				// A failed commit landed after all: it held the pending records.
				seq, prev, pending = head.Seq, head.Prev, nil
			}
		}
		for _, r := range pending {
			if err := b.Put(auditKey(r.seq), r.val); err != nil {
				return err
			}
		}
		for _, r := range batch {
			if r.probe {
				continue
			}
			if r.apply != nil {
				if err := r.apply(tx, seq+1); err != nil {
					return &applyError{req: r, err: err}
				}
			}
			seq++
			r.rec.Seq, r.rec.Prev = seq, prev
			val, tag, err := w.sealRecord(&r.rec)
			if err != nil {
				return err
			}
			if err := b.Put(auditKey(seq), val); err != nil {
				return err
			}
			prev = tag
		}
		return w.writePoint(tx, keyAuditHead, chainPoint{Seq: seq, Prev: prev})
	})
	if failed, ok := errors.AsType[*applyError](err); ok {
		return failed // the request's own failure, not the log's
	}
	if err != nil {
		w.fail(err)
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err) // ErrOutcomeUnknown stays visible
	}
	w.failing.Store(false)
	moved := len(batch) > 0 || seq != w.lastSeq
	w.lastSeq, w.lastMAC = seq, prev
	w.ckSeq = seq
	w.headSeq.Store(seq)
	if len(w.pending) > 0 {
		w.pending = nil
		w.ckTimer.Stop()
	}
	w.pendMu.Lock()
	w.pendView, w.pendTx = nil, txid
	w.pendMu.Unlock()
	if w.jr != nil {
		w.jr.restart()
	}
	if moved {
		w.wake()
	}
	return nil
}

// wake tells everyone waiting on the current committed channel that the log changed.
func (w *auditWriter) wake() {
	w.commitMu.Lock()
	close(w.committed)
	w.committed = make(chan struct{})
	w.commitMu.Unlock()
}

// AuditCommitted returns a channel that is closed at the next audit commit (or when the store
// closes). Take it before reading the log, so a commit between the read and the wait is not
// missed.
func (s *Store) AuditCommitted() <-chan struct{} {
	s.audit.commitMu.Lock()
	defer s.audit.commitMu.Unlock()
	return s.audit.committed
}

// AuditClosed returns a channel that is closed when the store's audit writer stops.
func (s *Store) AuditClosed() <-chan struct{} { return s.audit.done }

func (w *auditWriter) fail(err error) {
	w.cause.Store(&err)
	w.failing.Store(true)
}

// AuditHealthy reports (as an error) whether audit records can be written: a call that cannot be
// audited should not start. While the last commit succeeded it costs nothing. After a failure it
// probes with a commit of its own (shared with concurrent calls, like any append) instead of
// answering from the failure, so the first call after space returns goes ahead; the probe clears
// the failure when it commits. The error wraps the failure's cause (errors.Is finds
// syscall.ENOSPC on a full disk).
func (s *Store) AuditHealthy() error {
	if f := s.audit.fault.Load(); f != nil {
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, *f)
	}
	if !s.audit.failing.Load() {
		return nil
	}
	if err := s.appendAudit(context.Background(), &auditReq{probe: true, done: make(chan error, 1)}); err != nil {
		if c := s.audit.cause.Load(); c != nil && s.audit.failing.Load() {
			return fmt.Errorf("%w: the last audit write failed: %w", ErrAuditUnavailable, *c)
		}
		return err
	}
	return nil
}

func (w *auditWriter) close() {
	if w == nil {
		return
	}
	w.once.Do(func() {
		close(w.quit)
		<-w.done
		// run wakes the watchers too, but after closing done: wake here as well, so that every
		// AuditCommitted channel taken before Close is closed by the time Close returns.
		w.wake()
	})
}

// AppendAudit makes rec durable as the next record of the chain and returns when it is (or
// ctx ends; the record may still be written then). Concurrent appends share one commit.
func (s *Store) AppendAudit(ctx context.Context, rec AuditRecord) error {
	return s.appendAudit(ctx, &auditReq{rec: rec, done: make(chan error, 1)})
}

func (s *Store) appendAudit(ctx context.Context, r *auditReq) error {
	if !r.probe && r.prune == nil && r.rec.Method == "" {
		// Every reader (listing, verify, the journal's replay) takes a record without a method for
		// a damaged one: written, it would make the next start after a crash refuse the database.
		return errors.New("audit record without a method (a brokerd bug): not written")
	}
	select {
	case <-s.audit.quit:
		return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
	default:
	}
	select {
	case s.audit.reqs <- r:
	case <-s.audit.quit:
		return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrAuditUnavailable, ctx.Err())
	}
	select {
	case err := <-r.done:
		return err
	case <-s.audit.done:
		// The writer has stopped; it answers every request it took before stopping, so look
		// once more, then give up: a request that raced Close into the queue is never written.
		select {
		case err := <-r.done:
			return err
		default:
			return fmt.Errorf("%w: store closed", ErrAuditUnavailable)
		}
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrAuditUnavailable, ctx.Err())
	}
}

// CheckpointAudit moves the records in the audit journal into the database now, so that the file
// alone holds every record and the chain head that goes with the state (Close does the same).
func (s *Store) CheckpointAudit() error {
	if len(s.audit.pendingView()) == 0 {
		return nil
	}
	return s.appendAudit(context.Background(), &auditReq{probe: true, done: make(chan error, 1)})
}

// InjectAuditFailure makes every audit append fail with err until it is called with nil. It exists
// for fault-injection tests of the fail-closed path; brokerd never calls it.
func (s *Store) InjectAuditFailure(err error) {
	if err == nil {
		s.audit.fault.Store(nil)
		return
	}
	s.audit.fault.Store(&err)
}

// QueryDigest returns a keyed digest of a query, so the audit can show that two calls asked the
// same thing without storing what they asked.
func (s *Store) QueryDigest(q string) string {
	qm := s.audit.qmacs.Get().(*queryMAC)
	defer s.audit.qmacs.Put(qm)
	qm.in = append(append(qm.in[:0], "query\x00"...), q...)
	tag, err := qm.rm.appendMAC(qm.tag[:0], qm.in)
	// The pooled input buffer keeps no query (the HMAC's inner state may still hold up to a block
	// of it until the next use overwrites it); the audit log keeps only the MAC.
	clear(qm.in)
	if err != nil || len(tag) < 16 {
		return ""
	}
	qm.tag = tag
	return hex.EncodeToString(tag[len(tag)-16:])
}

// queryMAC is one goroutine's QueryDigest state at a time (sync.Pool): a recordMAC and its
// input and output buffers.
type queryMAC struct {
	rm      *recordMAC
	in, tag []byte
}

// ListAudit returns up to limit records with seq > afterSeq and time >= since, in chain order.
func (s *Store) ListAudit(afterSeq uint64, since time.Time, limit int) ([]AuditRecord, error) {
	out, _, err := s.ScanAudit(afterSeq, since, limit)
	return out, err
}

// ScanAudit is ListAudit that also returns the seq of the last record it looked at (afterSeq if
// none), skipped by since or not, so a caller that resumes from there does not read the skipped
// records again.
func (s *Store) ScanAudit(afterSeq uint64, since time.Time, limit int) ([]AuditRecord, uint64, error) {
	var out []AuditRecord
	last := afterSeq
	if afterSeq == math.MaxUint64 { // nothing comes after the last possible record (and +1 would wrap)
		return nil, last, nil
	}
	defer s.coldRead() // a page of records, perhaps old ones; watchers read the tail after every commit (mapped.go)
	// The records in the journal only, taken before the database is read: a checkpoint between
	// the two puts some of them in the database as well (skipped below by seq), never neither.
	pending := s.audit.pendingView()
	add := func(v []byte) error {
		_, body, err := s.audit.split(v)
		if err != nil {
			return err
		}
		rec, err := DecodeAuditRecord(body)
		if err != nil {
			return err
		}
		last = rec.Seq
		if !rec.Time.Before(since) {
			out = append(out, rec)
		}
		return nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(auditKey(afterSeq + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			if err := add(v); err != nil {
				return err
			}
		}
		return nil
	})
	for _, r := range pending {
		if err != nil || len(out) >= limit {
			break
		}
		if r.seq > last {
			err = add(r.val)
		}
	}
	return out, last, err
}

// NewestAudit returns the newest audit record; ok is false when the log holds none (empty, or
// pruned to its anchor).
func (s *Store) NewestAudit() (rec AuditRecord, ok bool, err error) {
	if pending := s.audit.pendingView(); len(pending) > 0 {
		// The newest record is in the journal (a checkpoint since only moved it into the
		// database, where it is still the newest until a later record, which is newer still).
		_, body, err := s.audit.split(pending[len(pending)-1].val)
		if err != nil {
			return AuditRecord{}, false, err
		}
		rec, err := DecodeAuditRecord(body)
		if err != nil {
			return AuditRecord{}, false, err
		}
		if newer, ok, err := s.newestAuditInDB(); err == nil && ok && newer.Seq > rec.Seq {
			return newer, true, nil
		}
		return rec, true, nil
	}
	return s.newestAuditInDB()
}

func (s *Store) newestAuditInDB() (rec AuditRecord, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return nil
		}
		k, v := b.Cursor().Last()
		if k == nil {
			return nil
		}
		_, body, err := s.audit.split(v)
		if err != nil {
			return err
		}
		if rec, err = DecodeAuditRecord(body); err != nil {
			return err
		}
		ok = true
		return nil
	})
	return rec, ok, err
}

// auditRecordTime returns a record body's seq and time without decoding the rest. A prune batch
// reads up to maxPruneBatch records while calls wait behind it: a full decode costs about 10 µs a
// record (10 ms a batch), this prefix parse about a fortieth of that. Bodies are json.Marshal of
// AuditRecord, which begins with seq and time; any other shape takes the full decode.
func auditRecordTime(body []byte) (uint64, time.Time, error) {
	if rest, ok := bytes.CutPrefix(body, []byte(`{"seq":`)); ok {
		if i := bytes.IndexByte(rest, ','); i > 0 {
			seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
			if v, ok := bytes.CutPrefix(rest[i:], []byte(`,"time":"`)); ok && err == nil && seq != 0 {
				if j := bytes.IndexByte(v, '"'); j > 0 {
					if t, err := time.Parse(time.RFC3339Nano, string(v[:j])); err == nil {
						return seq, t, nil
					}
				}
			}
		}
	}
	rec, err := DecodeAuditRecord(body)
	return rec.Seq, rec.Time, err
}

// DecodeAuditRecord parses an audit record body.
func DecodeAuditRecord(body []byte) (AuditRecord, error) {
	var rec AuditRecord
	if err := json.Unmarshal(body, &rec); err != nil {
		return AuditRecord{}, fmt.Errorf("%w: audit record: %v", ErrCorrupt, err)
	}
	if rec.Seq == 0 || rec.Method == "" {
		return AuditRecord{}, fmt.Errorf("%w: audit record incomplete", ErrCorrupt)
	}
	return rec, nil
}

// AuditVerification is the result of walking the chain.
type AuditVerification struct {
	Checked  int
	FirstSeq uint64 // first record checked (after the retention anchor)
	LastSeq  uint64
	OK       bool
	BadSeq   uint64 // the first record that fails, when !OK; 0 if what fails is a token or credential record
	Problem  string
	// Records is how many token and credential records were checked against their MACs.
	Records int
}

// VerifyAudit walks the whole chain from the retention anchor (or the start) to the head and
// reports the first record that was edited, removed or moved. It then checks every token and
// credential record's MAC, and that none was written after the head (a head put back to an older
// value, dropping the newest records, see checkIntegrity).
func (s *Store) VerifyAudit() (AuditVerification, error) {
	var v AuditVerification
	defer s.trimMapped() // the walk mapped the whole file (mapped.go)
	err := s.viewAudit(func(tx *bolt.Tx) error {
		v = AuditVerification{}
		w := s.audit
		anchor, err := w.readPoint(tx, keyAuditAnchor)
		if err != nil {
			v.Problem = "the retention anchor does not verify (edited?)"
			return nil
		}
		head, err := w.readPoint(tx, keyAuditHead)
		if err != nil {
			v.Problem = "the chain head does not verify (edited?)"
			return nil
		}
		want := chainPoint{Seq: 1}
		if anchor != nil {
			want = *anchor
		}
		v.FirstSeq = want.Seq
		fail := func(seq uint64, format string, args ...any) error {
			v.BadSeq, v.Problem = seq, fmt.Sprintf(format, args...)
			return nil
		}
		b := tx.Bucket(bucketAudit)
		if b != nil {
			c := b.Cursor()
			for k, val := c.First(); k != nil; k, val = c.Next() {
				if len(k) != 8 {
					return fail(want.Seq, "a record with a malformed key was inserted")
				}
				key := binary.BigEndian.Uint64(k)
				tag, body, err := w.split(val)
				if err != nil {
					return fail(key, "record %d is truncated", key)
				}
				if w.mac.VerifyMAC(tag, body) != nil {
					return fail(key, "record %d was edited (its MAC does not verify)", key)
				}
				rec, err := DecodeAuditRecord(body)
				if err != nil {
					return fail(key, "record %d does not decode", key)
				}
				switch {
				case rec.Seq != key:
					return fail(key, "the record stored at %d says it is record %d (records were moved)", key, rec.Seq)
				case key < want.Seq:
					return fail(key, "record %d precedes the retention anchor at %d", key, want.Seq)
				case key > want.Seq:
					return fail(want.Seq, "record %d is missing (removed); the next present record is %d", want.Seq, key)
				case !hmac.Equal(rec.Prev, want.Prev):
					return fail(key, "record %d does not follow record %d (an earlier record was replaced or reordered)", key, key-1)
				}
				v.Checked++
				v.LastSeq = key
				want = chainPoint{Seq: key + 1, Prev: tag}
			}
		}
		if head == nil && (v.Checked > 0 || anchor != nil) {
			return fail(want.Seq, "the chain head is missing (removed): records after %d may have been removed with it", want.Seq-1)
		}
		if head != nil && (head.Seq != want.Seq-1 || !hmac.Equal(head.Prev, want.Prev)) {
			if head.Seq > want.Seq-1 {
				return fail(want.Seq, "records %d..%d at the end of the log are missing (removed)", want.Seq, head.Seq)
			}
			return fail(head.Seq, "the chain head does not match the last record")
		}
		var headSeq uint64
		if head != nil {
			headSeq = head.Seq
		}
		// Then the records in the journal only (journal.go), which continue the database's head.
		tail, err := w.auditTail(tx, headSeq)
		if err != nil {
			return err
		}
		for _, r := range tail {
			tag, body, err := w.split(r.val)
			if err != nil || w.mac.VerifyMAC(tag, body) != nil {
				return fail(r.seq, "journal record %d does not verify", r.seq)
			}
			rec, err := DecodeAuditRecord(body)
			if err != nil || rec.Seq != want.Seq || !hmac.Equal(rec.Prev, want.Prev) {
				return fail(r.seq, "journal record %d does not follow record %d", r.seq, want.Seq-1)
			}
			v.Checked++
			v.LastSeq = r.seq
			want = chainPoint{Seq: r.seq + 1, Prev: tag}
			headSeq = r.seq
		}
		// The chain is whole up to its head; the head must also be no older than the state, and
		// every token and credential record must verify (records.go).
		r := s.checkIntegrity(tx, headSeq)
		v.Records = r.Records
		if !r.OK() {
			bad := uint64(0) // a record outside the chain
			if r.MaxStamp > headSeq {
				bad = headSeq + 1 // the first record dropped with the head
			}
			return fail(bad, "%s", strings.Join(r.Problems, "; "))
		}
		v.OK = true
		return nil
	})
	return v, err
}

// PruneAudit deletes up to limit of the oldest records, stopping at the first one not older
// than before, and moves the retention anchor so the rest still verifies. It deletes in
// transactions of at most maxPruneBatch records, each run by the audit writer between its group
// commits, so an audited call waits behind one batch at most, never the whole prune. Each batch
// moves the anchor with the records it deletes: the chain verifies after every batch, and a crash
// between batches leaves a shorter prune, not a broken chain. ctx ending stops it between
// batches. It returns the number of records deleted.
func (s *Store) PruneAudit(ctx context.Context, before time.Time, limit int) (int, error) {
	total := 0
	for total < limit {
		if err := ctx.Err(); err != nil {
			return total, err // checked first: a prune cancelled between batches sends no more
		}
		p := &pruneReq{before: before, max: min(maxPruneBatch, limit-total)}
		if err := s.appendAudit(ctx, &auditReq{prune: p, done: make(chan error, 1)}); err != nil {
			if ctx.Err() != nil {
				return total, ctx.Err()
			}
			return total, fmt.Errorf("audit retention: %w", err)
		}
		total += p.n
		if p.n < p.max {
			break // reached a record to keep, or the end of the log
		}
	}
	return total, nil
}

// pruneBatch deletes, in one transaction, up to p.max of the oldest records older than p.before
// and writes the anchor the remaining chain starts from. It touches neither the chain head nor
// the writer's in-memory head: appends go on from where they were.
func (w *auditWriter) pruneBatch(p *pruneReq) error {
	start := time.Now()
	err := w.guard.update(w.db.Update, func(tx *bolt.Tx) error {
		p.n = 0
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return nil
		}
		var (
			keys [][]byte
			next chainPoint
		)
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(keys) < p.max; k, v = c.Next() {
			tag, body, err := w.split(v)
			if err != nil {
				return err
			}
			seq, at, err := auditRecordTime(body)
			if err != nil {
				return err
			}
			if !at.Before(p.before) {
				break
			}
			keys = append(keys, bytes.Clone(k))
			next = chainPoint{Seq: seq + 1, Prev: bytes.Clone(tag)}
		}
		// Delete after the walk: a bbolt cursor skips the next key after a Delete under it.
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if len(keys) == 0 {
			return nil
		}
		p.n = len(keys)
		return w.writePoint(tx, keyAuditAnchor, next)
	})
	if err != nil {
		p.n = 0
	}
	if w.onPrune != nil {
		w.onPrune(p.n, time.Since(start), err)
	}
	return err
}
