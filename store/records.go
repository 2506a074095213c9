package store

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
)

// Record MACs (schema 2). Every value in tokens/ and under credentials/ (meta, policy, limits,
// credits, events and each version) is sealed: a Tink HMAC-SHA256 tag under the record keyset
// (meta/record_keyset, wrapped by the master keyset like the data and audit keysets) over the
// record's bucket path, its key, the audit seq stamped on it and its body. Whoever can write the
// file but does not hold the master keyset can therefore not forge, edit or move a record (a
// rotate command, a token's scope or expiry): a record that does not verify is never used, and
// its read fails with ErrTampered.
//
// A sealed value is
//
//	0x01 | stamp (8 bytes, big endian) | tag length (1 byte) | tag | body (JSON)
//
// where stamp is the audit chain's head seq when the record was written (the seq of its own
// audit record for a token minted with PutTokenAudited). The audit head only grows, so a record
// stamped later than the head means the head was put back to an older value, dropping the newest
// audit records with it (checkIntegrity, VerifyAudit).

var (
	keyRecordKeyset = []byte("record_keyset")
	recordKeysetAAD = []byte("credbroker/record-keyset")
)

// ErrTampered reports a record that fails its integrity check: it was written, edited, moved or
// put back by something other than brokerd (or the file is damaged). It is never used.
var ErrTampered = errors.New("database record failed its integrity check")

const sealFormat = 0x01

// recordMACPrefix separates record MAC inputs from every other use of the key.
var recordMACPrefix = []byte("credbroker/record/v1\x00")

// slot names a bucket by its path from the root, e.g. {"credentials", "k", "versions"}.
type slot [][]byte

func tokensSlot() slot                { return slot{bucketTokens} }
func credentialSlot(name string) slot { return slot{bucketCredentials, []byte(name)} }
func versionsSlot(name string) slot {
	return slot{bucketCredentials, []byte(name), bucketVersions}
}

func (sl slot) String() string {
	parts := make([]string, len(sl))
	for i, p := range sl {
		parts[i] = string(p)
	}
	return fmt.Sprintf("%q", parts)
}

// recordMACInput is what a record's tag covers: every part is length-prefixed, so no two
// (path, key, stamp, body) tuples share an input.
func recordMACInput(sl slot, key []byte, stamp uint64, body []byte) []byte {
	n := len(recordMACPrefix) + 8 + len(key) + 8 + len(body) + 4*(len(sl)+1)
	for _, p := range sl {
		n += len(p)
	}
	return appendRecordMACInput(make([]byte, 0, n), sl, key, stamp, body)
}

// appendRecordMACInput appends recordMACInput's bytes to in.
func appendRecordMACInput(in []byte, sl slot, key []byte, stamp uint64, body []byte) []byte {
	in = append(in, recordMACPrefix...)
	in = binary.AppendUvarint(in, uint64(len(sl)))
	for _, p := range sl {
		in = binary.AppendUvarint(in, uint64(len(p)))
		in = append(in, p...)
	}
	in = binary.AppendUvarint(in, uint64(len(key)))
	in = append(in, key...)
	in = binary.BigEndian.AppendUint64(in, stamp)
	return append(in, body...)
}

// sealWith returns the sealed value of body stored at sl/key.
func sealWith(m tink.MAC, sl slot, key, body []byte, stamp uint64) ([]byte, error) {
	tag, err := m.ComputeMAC(recordMACInput(sl, key, stamp, body))
	if err != nil {
		return nil, fmt.Errorf("record MAC: %w", err)
	}
	out := make([]byte, 0, 10+len(tag)+len(body))
	out = append(out, sealFormat)
	out = binary.BigEndian.AppendUint64(out, stamp)
	out = append(out, byte(len(tag)))
	out = append(out, tag...)
	return append(out, body...), nil
}

// splitSealed parses a sealed value without verifying it.
func splitSealed(raw []byte) (stamp uint64, tag, body []byte, ok bool) {
	if len(raw) < 10 || raw[0] != sealFormat || len(raw) < 10+int(raw[9]) {
		return 0, nil, nil, false
	}
	n := int(raw[9])
	return binary.BigEndian.Uint64(raw[1:9]), raw[10 : 10+n], raw[10+n:], true
}

// tamperedError says which record failed and what to do.
func tamperedError(sl slot, key []byte, why string) error {
	return fmt.Errorf("record %s key %q %s: %w (changed outside brokerd, or the file is damaged); never used: restore the database from a backup", sl, key, why, ErrTampered)
}

// seal seals body for sl/key, stamped with the audit head's current seq.
func (s *Store) seal(sl slot, key, body []byte) ([]byte, error) {
	return sealWith(s.recMAC, sl, key, body, s.auditStamp())
}

// openSealed verifies raw, stored at sl/key, and returns its body (aliasing raw) and stamp.
func (s *Store) openSealed(sl slot, key, raw []byte) (body []byte, stamp uint64, err error) {
	stamp, tag, body, ok := splitSealed(raw)
	if !ok {
		return nil, 0, tamperedError(sl, key, "is not sealed")
	}
	v := s.recVerifiers.Get().(*recordVerifier)
	v.in = appendRecordMACInput(v.in[:0], sl, key, stamp, body)
	ok = v.rm.verify(tag, v.in)
	clear(v.in) // a credential record's body is ciphertext, but keep no record in the pool
	s.recVerifiers.Put(v)
	if !ok {
		return nil, 0, tamperedError(sl, key, "does not verify")
	}
	return body, stamp, nil
}

// recordVerifier is a pooled record-keyset HMAC state and its input buffer (openSealed).
type recordVerifier struct {
	rm *recordMAC
	in []byte
}

// putRecord marshals v as JSON and stores it sealed at b (which is sl) under key.
func (s *Store) putRecord(b *bolt.Bucket, sl slot, key []byte, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sealed, err := s.seal(sl, key, body)
	if err != nil {
		return err
	}
	return b.Put(key, sealed)
}

// getRecord reads and verifies the record at b (which is sl) under key. It returns nil, nil if
// there is none; the body aliases bbolt's memory and is valid only in the transaction.
func (s *Store) getRecord(b *bolt.Bucket, sl slot, key []byte) ([]byte, error) {
	raw := b.Get(key)
	if raw == nil {
		return nil, nil
	}
	body, _, err := s.openSealed(sl, key, raw)
	return body, err
}

// auditStamp is the audit head's seq as of the last committed append: every record stamped with
// it is written after that append committed, so the stamp never exceeds the durable head.
func (s *Store) auditStamp() uint64 {
	if s.audit == nil {
		return 0 // opening: the migration stamps what it finds with 0
	}
	return s.audit.headSeq.Load()
}

// newRecordKeyset generates a record MAC keyset and returns it wrapped under kek.
func newRecordKeyset(kek tink.AEAD) (*keyset.Handle, []byte, error) {
	h, err := keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate())
	if err != nil {
		return nil, nil, fmt.Errorf("generate record keyset: %w", err)
	}
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, recordKeysetAAD); err != nil {
		return nil, nil, fmt.Errorf("encrypt record keyset: %w", err)
	}
	return h, buf.Bytes(), nil
}

// loadRecordKeyset unwraps the stored record keyset.
func loadRecordKeyset(kek tink.AEAD, blob []byte) (*keyset.Handle, error) {
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(blob)), kek, recordKeysetAAD)
	if err != nil {
		return nil, ErrWrongMasterKey
	}
	return h, nil
}

// setRecordKeyset makes h the keyset that seals and verifies records.
func (s *Store) setRecordKeyset(h *keyset.Handle) error {
	m, err := mac.New(h)
	if err != nil {
		return fmt.Errorf("record keyset: %w", err)
	}
	s.recMAC = m
	s.recVerifiers.New = func() any { return &recordVerifier{rm: newRecordMAC(h, m)} }
	return nil
}

// migrateRecordMACs is schema 1 -> 2: it creates the record keyset and seals every existing
// token and credential record, stamped 0. This is the trust-on-first-use point: whatever the
// database holds when a brokerd with record MACs first opens it is taken as genuine. Records
// written by brokerd before then carried no integrity check, so an edit made before the
// migration cannot be told from a genuine record.
func (s *Store) migrateRecordMACs(tx *bolt.Tx, kek tink.AEAD) error {
	h, blob, err := newRecordKeyset(kek)
	if err != nil {
		return err
	}
	if err := s.setRecordKeyset(h); err != nil {
		return err
	}
	if err := tx.Bucket(bucketMeta).Put(keyRecordKeyset, blob); err != nil {
		return err
	}
	if err := forEachRecordBucket(tx, func(b *bolt.Bucket, sl slot) error {
		type kv struct{ k, v []byte }
		var todo []kv
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				continue // a nested bucket
			}
			sealed, err := sealWith(s.recMAC, sl, k, v, 0)
			if err != nil {
				return err
			}
			todo = append(todo, kv{bytes.Clone(k), sealed})
		}
		for _, e := range todo {
			if err := b.Put(e.k, e.v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	// Bind each credential's policy and limits to its meta record. A credential whose meta record
	// does not decode is left as it is: reading it fails as it did before the migration.
	creds := tx.Bucket(bucketCredentials)
	if creds == nil {
		return nil
	}
	return creds.ForEachBucket(func(k []byte) error {
		b := creds.Bucket(k)
		if _, err := s.readCredentialRecord(b, string(k)); err != nil {
			return nil
		}
		return s.rebind(b, string(k))
	})
}

// Bindings: a credential's meta record keeps the first bindingLen bytes of the MAC tags of its
// policy and limits records, so that removing one (no limits: unlimited spending), or putting back
// an earlier, validly MACed value (a previous rotate command, a higher ceiling), is caught like an
// edit. The monthly credit counter and the event list are not bound (see README's security model).
const bindingLen = 16

// bindingTag is what a meta record keeps of the sealed value raw; nil for none.
func bindingTag(raw []byte) []byte {
	if raw == nil {
		return nil
	}
	_, tag, _, ok := splitSealed(raw)
	if !ok || len(tag) < bindingLen {
		return []byte{0} // matches no stored binding: the record itself fails to open anyway
	}
	return bytes.Clone(tag[len(tag)-bindingLen:])
}

// checkBindings reports a policy or limits record in b that is not the one rec binds.
func checkBindings(b *bolt.Bucket, name string, rec credentialRecord) error {
	for _, k := range []struct {
		key  []byte
		want []byte
	}{{keyPolicy, rec.PolicyTag}, {keyLimits, rec.LimitsTag}} {
		if !hmac.Equal(bindingTag(b.Get(k.key)), k.want) {
			return tamperedError(credentialSlot(name), k.key, "is not the one the credential's meta record binds (removed, added or put back to an earlier value)")
		}
	}
	return nil
}

// rebind records in name's meta record the policy and limits records b now holds; every write
// of either calls it in the same transaction.
func (s *Store) rebind(b *bolt.Bucket, name string) error {
	rec, err := s.readCredentialRecord(b, name)
	if err != nil {
		return err
	}
	rec.PolicyTag, rec.LimitsTag = bindingTag(b.Get(keyPolicy)), bindingTag(b.Get(keyLimits))
	return s.writeCredentialRecord(b, name, rec)
}

// forEachRecordBucket calls fn for every bucket whose values are sealed records: tokens/,
// workloads/, credentials/<name>/ and credentials/<name>/versions/.
func forEachRecordBucket(tx *bolt.Tx, fn func(b *bolt.Bucket, sl slot) error) error {
	if b := tx.Bucket(bucketTokens); b != nil {
		if err := fn(b, tokensSlot()); err != nil {
			return err
		}
	}
	if b := tx.Bucket(bucketWorkloads); b != nil {
		if err := fn(b, workloadsSlot()); err != nil {
			return err
		}
	}
	creds := tx.Bucket(bucketCredentials)
	if creds == nil {
		return nil
	}
	return creds.ForEachBucket(func(k []byte) error {
		name := string(k)
		b := creds.Bucket(k)
		if err := fn(b, credentialSlot(name)); err != nil {
			return err
		}
		if vb := b.Bucket(bucketVersions); vb != nil {
			return fn(vb, versionsSlot(name))
		}
		return nil
	})
}

// IntegrityReport is the result of checking every sealed record against its MAC and against
// the audit chain head.
type IntegrityReport struct {
	Records  int    // sealed records checked
	MaxStamp uint64 // the highest audit seq a record was stamped with
	// HeadSeq is the audit chain head's seq, and AuditLastSeq the newest audit record's.
	HeadSeq, AuditLastSeq uint64
	// Problems lists what failed, first ones only (maxIntegrityProblems); empty means it verified.
	Problems []string
}

const maxIntegrityProblems = 5

// OK reports whether nothing failed.
func (r IntegrityReport) OK() bool { return len(r.Problems) == 0 }

func (r *IntegrityReport) problem(format string, args ...any) {
	if len(r.Problems) < maxIntegrityProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// checkIntegrity verifies every sealed record and checks that the audit chain head is not older
// than the state: no record stamped after it, no audit record after it. head is the verified
// head's seq (0 for a log never written to).
func (s *Store) checkIntegrity(tx *bolt.Tx, head uint64) IntegrityReport {
	r := IntegrityReport{HeadSeq: head}
	var newest string
	// Verifying a record's MAC is most of a start's time on a large database (a new HMAC per
	// record, inside Tink): the records are verified in chunks on every core, then folded in
	// file order, so the report is the same as one goroutine's.
	var chunk []sealedRecord
	fold := func() {
		verifyAll(s, chunk)
		for _, rec := range chunk {
			r.Records++
			if rec.err != nil {
				r.problem("record %s key %q does not verify (edited, moved or forged)", rec.sl, rec.key)
				continue
			}
			if rec.stamp > r.MaxStamp {
				r.MaxStamp, newest = rec.stamp, fmt.Sprintf("record %s key %q", rec.sl, rec.key)
			}
		}
		chunk = chunk[:0]
	}
	err := forEachRecordBucket(tx, func(b *bolt.Bucket, sl slot) error {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				continue
			}
			if chunk = append(chunk, sealedRecord{sl: sl, key: k, raw: v}); len(chunk) == verifyChunk {
				fold()
			}
		}
		return nil
	})
	fold()
	if err != nil {
		r.problem("walking the records: %v", err)
	}
	if creds := tx.Bucket(bucketCredentials); creds != nil {
		creds.ForEachBucket(func(k []byte) error {
			b := creds.Bucket(k)
			if rec, err := s.readCredentialRecord(b, string(k)); err == nil {
				if err := checkBindings(b, string(k), rec); err != nil {
					r.problem("credential %q: %s", k, strings.TrimSuffix(err.Error(), "; never used: restore the database from a backup"))
				}
			}
			return nil
		})
	}
	if b := tx.Bucket(bucketAudit); b != nil {
		if k, _ := b.Cursor().Last(); len(k) == 8 {
			r.AuditLastSeq = binary.BigEndian.Uint64(k)
		}
	}
	if r.MaxStamp > head {
		r.problem("the audit chain head (record %d) is older than the state: %s was written at audit record %d; the head was put back to an earlier value and the newest audit records were dropped", head, newest, r.MaxStamp)
	}
	if r.AuditLastSeq > head {
		r.problem("the audit chain head (record %d) is older than the newest audit record %d: the head was put back to an earlier value", head, r.AuditLastSeq)
	}
	return r
}

// sealedRecord is one stored record to verify (key and raw alias bbolt's memory: valid in the
// transaction) and the outcome.
type sealedRecord struct {
	sl       slot
	key, raw []byte
	stamp    uint64
	err      error
}

// verifyChunk bounds the records held for verifyAll at a time.
const verifyChunk = 4096

// verifyAll verifies recs (openSealed), split across GOMAXPROCS goroutines.
func verifyAll(s *Store, recs []sealedRecord) {
	verify := func(part []sealedRecord) {
		for i := range part {
			_, part[i].stamp, part[i].err = s.openSealed(part[i].sl, part[i].key, part[i].raw)
		}
	}
	n := min(runtime.GOMAXPROCS(0), len(recs)/64+1) // small chunks are not worth a goroutine
	var (
		wg       sync.WaitGroup
		panicked atomic.Pointer[any]
	)
	// A panic is the caller's to handle (Open recovers it into an error), once every part has
	// stopped reading the transaction's memory: not a crash in a goroutine of its own.
	run := func(part []sealedRecord) {
		defer func() {
			if v := recover(); v != nil {
				panicked.Store(&v)
			}
		}()
		verify(part)
	}
	for i := range n {
		part := recs[i*len(recs)/n : (i+1)*len(recs)/n]
		if i == n-1 {
			run(part)
			break
		}
		wg.Go(func() { run(part) })
	}
	wg.Wait()
	if v := panicked.Load(); v != nil {
		panic(*v)
	}
}

// CheckIntegrity verifies every sealed record and the audit head's freshness (see
// checkIntegrity). Open runs it and refuses a database that fails.
func (s *Store) CheckIntegrity() (IntegrityReport, error) {
	var r IntegrityReport
	defer s.trimMapped() // the check read every record (mapped.go)
	err := s.viewAudit(func(tx *bolt.Tx) error {
		head, err := s.audit.readPoint(tx, keyAuditHead)
		if err != nil {
			return err
		}
		var seq uint64
		if head != nil {
			seq = head.Seq
		}
		// Records in the audit journal only move the head on (journal.go).
		tail, err := s.audit.auditTail(tx, seq)
		if err != nil {
			return err
		}
		if len(tail) > 0 {
			seq = tail[len(tail)-1].seq
		}
		r = s.checkIntegrity(tx, seq)
		return nil
	})
	return r, err
}
