package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Sentinel errors. Callers match them with errors.Is; messages carry names, never values.
var (
	ErrNotFound       = errors.New("not found")
	ErrExists         = errors.New("already exists")
	ErrLocked         = errors.New("database is locked by another process")
	ErrWrongMasterKey = errors.New("master keyset does not decrypt this database's data keyset")
	ErrSchemaTooNew   = errors.New("database schema is newer than this brokerd")
	ErrCorrupt        = errors.New("database record is corrupt")
)

var (
	bucketMeta        = []byte("meta")
	bucketCredentials = []byte("credentials")
	bucketTokens      = []byte("tokens")
	bucketVersions    = []byte("versions")
	keySchemaVersion  = []byte("version")
	keyDataKeyset     = []byte("data_keyset")
	keyCredMeta       = []byte("meta")
	dataKeysetAAD     = []byte("credbroker/data-keyset")
)

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock; a second brokerd on the same file fails after it.
	// Default 1s.
	LockTimeout time.Duration
	// KeepVersions is how many credential versions are kept (the current one included). Default 3.
	KeepVersions int
	// NoSync skips fsync on commit. Only for benchmarks of the non-durable path; never in brokerd.
	NoSync bool
	// OnAuditCommit, if set, is told about every audit group commit: how many records it made
	// durable, how long the transaction took and whether it failed. brokerd feeds its metrics
	// with it. It runs on the audit writer goroutine, so it must be quick.
	OnAuditCommit func(records int, took time.Duration, err error)
	// OnFatal, if set, is told (once, on its own goroutine) when a commit failed but became visible
	// anyway (a failed fdatasync): the store takes no more writes, and brokerd should restart so
	// it reads the file again. See commitGuard.
	OnFatal func(error)
	// OnAuditPrune, if set, is told about every retention prune batch (PruneAudit): how many
	// records its transaction deleted, how long it took and whether it failed. Like
	// OnAuditCommit it runs on the audit writer goroutine and must be quick.
	OnAuditPrune func(records int, took time.Duration, err error)
	// OnAuditCheckpoint, if set, is told about every move of the audit journal's records into the
	// database (journal.go): how many, how long the transaction took, whether it failed. Like
	// OnAuditCommit it runs on the audit writer goroutine and must be quick.
	OnAuditCheckpoint func(records int, took time.Duration, err error)
	// AuditCheckpointInterval bounds how long a record stays in the audit journal before it is
	// moved into the database (default DefaultAuditCheckpointInterval). A checkpoint also runs
	// when the journal fills, when a state change commits, and before a verification.
	AuditCheckpointInterval time.Duration
	// NoJournal commits every audit record to bbolt (two fdatasyncs per group), as before the
	// journal: only for benchmarks that compare the two.
	NoJournal bool
}

// DefaultAuditCheckpointInterval is Options.AuditCheckpointInterval's default.
const DefaultAuditCheckpointInterval = time.Second

// syncFreelist makes commits write the freelist again (bbolt's default); only the benchmarks set
// it, to compare.
var syncFreelist = false

// freelistType is bbolt's free page list; a variable only for BenchmarkOpenBigDB.
var freelistType = bolt.FreelistMapType

// Store is the bbolt database plus the data-keyset AEAD built once at Open.
type Store struct {
	db           *bolt.DB
	data         tink.AEAD
	keepVersions int
	audit        *auditWriter
	guard        *commitGuard // every write transaction's commit goes through it
	keys         *dataKeys    // master keyset and swappable data primitive, for Rekey (keys.go)
	recMAC       tink.MAC     // record keyset: seals every token and credential record (records.go)
	// recVerifiers holds *recordVerifier for recMAC's key: a pooled HMAC state for openSealed,
	// which the start-up check calls for every record (records.go).
	recVerifiers sync.Pool
	// openedInfo is the data keyset's key list as Open read it, so Keys needs no KEK call until
	// the stored keyset changes (a KMS may be down after start).
	openedInfo *dataKeysetInfo

	// batching counts batched writes in flight (batch).
	batching atomic.Int32

	// current caches each credential's current version and ciphertext (never the plaintext) so
	// the hot path decrypts without a read transaction. Entries are stamped with writeGen, which
	// every write transaction bumps after it commits: an entry from before the last write is
	// stale, so a call that starts after a rotation returns always loads the new version.
	current  sync.Map // credential name -> *currentVersion
	writeGen atomic.Uint64

	// coldReads counts single-record reads that may map cold pages (mapped.go).
	coldReads atomic.Uint64
	// syncedTxID is the transaction whose meta page names a freelist page, if Open found one
	// (0 if not): Close writes the list only if a later transaction committed (freelist.go).
	syncedTxID uint64
}

type currentVersion struct {
	gen        uint64
	version    uint64
	ciphertext []byte
}

// update runs a write transaction and then invalidates the current-version cache. Every write
// in this package goes through it (the audit log's appends, which touch no credential, do not).
func (s *Store) update(fn func(*bolt.Tx) error) error {
	defer s.writeGen.Add(1)
	return s.guard.update(s.db.Update, fn)
}

// LastTxID is the id of the newest committed write transaction. bbolt adds one per commit, so its
// change over a window counts the durable commits (each two fdatasyncs) made in it.
func (s *Store) LastTxID() uint64 {
	var id int
	s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return uint64(id)
}

// batch group-commits fn with concurrent batched writes (bbolt's Batch: fn must be idempotent,
// it may run twice). A writer with no company commits at once instead of waiting MaxBatchDelay
// for writers that are not coming: a lone use-limited call pays one commit, not one commit plus
// the timer. (Mints through the gRPC API commit with their audit record: PutTokenAudited.)
func (s *Store) batch(fn func(*bolt.Tx) error) error {
	defer s.batching.Add(-1)
	if s.batching.Add(1) == 1 {
		return s.guard.update(s.db.Update, fn)
	}
	return s.guard.update(s.db.Batch, fn)
}

// Open opens (or creates) the database at path and unlocks it with the master keyset kek.
// A wrong kek leaves the file untouched and returns ErrWrongMasterKey.
func Open(path string, kek tink.AEAD, opts Options) (s *Store, err error) {
	// Before anything reads or changes it: not a symbolic link, a regular file, ours.
	if err := checkDBPath(path); err != nil {
		return nil, err
	}
	switch st, serr := os.Lstat(path); {
	case serr == nil && st.Mode().IsRegular() && st.Size() == 0:
		// bbolt would quietly initialise it, and brokerd would start with nothing: an empty file
		// where a database should be is a lost database, not a new one.
		return nil, fmt.Errorf("open database %s: %w: the file is empty; restore it from a backup, or remove it (and its audit journal, %s) to start a new database", path, ErrCorrupt, JournalPath(path))
	case errors.Is(serr, os.ErrNotExist):
		if err := orphanJournal(path); err != nil {
			return nil, err
		}
	}
	// bbolt panics on some damaged files (a truncated file, overwritten in-use pages) instead of
	// returning an error; turn that into a refusal that says what to do.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("open database %s: %w: bbolt cannot read it (%v); restore it from a backup", path, ErrCorrupt, r)
		}
	}()
	return open(path, kek, opts)
}

func open(path string, kek tink.AEAD, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.KeepVersions <= 0 {
		opts.KeepVersions = 3
	}
	// openDBFile refuses a symbolic link, another user's file or a non-regular one, and tightens a
	// loosened mode on the descriptor it checked.
	// NoFreelistSync: a commit does not write the free page list; Close does (freelist.go).
	// After a crash bolt.Open rebuilds the list by walking the file, on a goroutine where a damaged
	// page cannot be recovered from: walk it here first.
	meta, ok := readBoltMeta(path)
	if ok && meta.truncated() {
		return nil, fmt.Errorf("open database %s: %w: the file is %d bytes, shorter than the %d pages of %d bytes it says it holds (truncated?); restore it from a backup",
			path, ErrCorrupt, meta.fileSize, meta.pages, meta.pageSize)
	}
	synced := !ok || meta.synced()
	if !syncFreelist && !synced {
		if err := walkAll(path, opts.LockTimeout); errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open database %s: %w (is another brokerd running on it?)", path, ErrLocked)
		} else if err != nil {
			return nil, fmt.Errorf("open database %s: %w: %v; restore it from a backup", path, ErrCorrupt, err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, NoSync: opts.NoSync, OpenFile: openDBFile,
		NoFreelistSync: !syncFreelist, FreelistType: freelistType})
	if err == nil {
		// Batch (token uses, budgets) waits this long for company before committing; bbolt's
		// 10ms default would be the latency of every use-limited call at low concurrency.
		db.MaxBatchDelay = 500 * time.Microsecond
	}
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open database %s: %w (is another brokerd running on it?)", path, ErrLocked)
		}
		if errors.Is(err, ErrFileOwner) {
			return nil, err
		}
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	s := &Store{db: db, keepVersions: opts.KeepVersions, guard: &commitGuard{db: db, onFatal: opts.OnFatal}}
	if synced {
		s.syncedTxID = s.LastTxID() // Close need not write the list again if nothing commits
	}
	if err := s.init(kek); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	s.openKeys(kek)
	if err := s.openAudit(kek, opts); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: audit log: %w", path, err)
	}
	// Fail closed: a forged record or a rolled-back audit head means the file was changed by
	// something other than brokerd, and nothing in it can be trusted to serve from.
	r, err := s.CheckIntegrity()
	if err == nil && !r.OK() {
		err = fmt.Errorf("%w: %s; brokerd will not serve from it: restore the database from a backup", ErrTampered, strings.Join(r.Problems, "; "))
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return s, nil
}

// init reads the schema and the data keyset, creating both in a new database. An existing
// database is only read until the master keyset is proven right, so a wrong key changes nothing.
func (s *Store) init(kek tink.AEAD) error {
	var (
		version   uint32
		encrypted []byte
	)
	if err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return nil
		}
		v, err := parseVersion(m.Get(keySchemaVersion))
		if err != nil {
			return err
		}
		version = v
		encrypted = bytes.Clone(m.Get(keyDataKeyset))
		return nil
	}); err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: database has schema %d, this brokerd knows up to %d", ErrSchemaTooNew, version, SchemaVersion)
	}

	if encrypted == nil {
		if version != 0 {
			return fmt.Errorf("%w: schema %d but no data keyset", ErrCorrupt, version)
		}
		return s.create(kek)
	}
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(encrypted)), kek, dataKeysetAAD)
	if err != nil {
		return ErrWrongMasterKey
	}
	s.openedInfo = &dataKeysetInfo{blob: encrypted, info: h.KeysetInfo()}
	if s.data, err = aead.New(h); err != nil {
		return fmt.Errorf("data keyset: %w", err)
	}
	if version >= 2 {
		var blob []byte
		s.db.View(func(tx *bolt.Tx) error {
			blob = bytes.Clone(tx.Bucket(bucketMeta).Get(keyRecordKeyset))
			return nil
		})
		if blob == nil {
			return fmt.Errorf("%w: schema %d but no record keyset", ErrTampered, version)
		}
		h, err := loadRecordKeyset(kek, blob)
		if err != nil {
			return err
		}
		if err := s.setRecordKeyset(h); err != nil {
			return err
		}
	}
	return s.migrate(version, kek)
}

// create initialises an empty database: buckets, schema version and a fresh data keyset.
func (s *Store) create(kek tink.AEAD) error {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return fmt.Errorf("generate data keyset: %w", err)
	}
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, dataKeysetAAD); err != nil {
		return fmt.Errorf("encrypt data keyset: %w", err)
	}
	s.openedInfo = &dataKeysetInfo{blob: buf.Bytes(), info: h.KeysetInfo()}
	if s.data, err = aead.New(h); err != nil {
		return fmt.Errorf("data keyset: %w", err)
	}
	recH, recBlob, err := newRecordKeyset(kek)
	if err != nil {
		return err
	}
	if err := s.setRecordKeyset(recH); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketCredentials, bucketTokens} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := m.Put(keyDataKeyset, buf.Bytes()); err != nil {
			return err
		}
		if err := m.Put(keyRecordKeyset, recBlob); err != nil {
			return err
		}
		return m.Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion)))
	})
}

func parseVersion(b []byte) (uint32, error) {
	if b == nil {
		return 0, nil
	}
	v, err := strconv.ParseUint(string(b), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: schema version %q", ErrCorrupt, b)
	}
	return uint32(v), nil
}

// Close stops the audit writer (failing appends that arrive later) and closes the database.
// Callers stop writing first: a batched write still waiting for its commit fails.
func (s *Store) Close() error {
	s.audit.close()
	s.syncFreelistAtClose()
	return s.db.Close()
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.db.Path() }

// Check runs bbolt's consistency check over the whole file and returns the first problem found.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		// Drain the channel: the checker goroutine blocks until every error is read.
		var first error
		for err := range tx.Check() {
			if first == nil {
				first = fmt.Errorf("%w: %v", ErrCorrupt, err)
			}
		}
		return first
	})
}
