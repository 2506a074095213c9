package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/store"
)

// diskInfo is what durability costs on the file system the databases live on: the unit every
// audited or written call pays at concurrency 1.
type diskInfo struct {
	FdatasyncP50 time.Duration `json:"fdatasync_p50_ns"`
	FdatasyncP99 time.Duration `json:"fdatasync_p99_ns"`
	// CommitP50 is one bbolt Update putting one small value: what one durable write transaction
	// costs (bbolt syncs the data pages, then the meta page: two fdatasyncs).
	CommitP50 time.Duration `json:"bbolt_commit_p50_ns"`
	CommitP99 time.Duration `json:"bbolt_commit_p99_ns"`
	// DSync is whether the writes were made durable with RWF_DSYNC (false: write, then fdatasync,
	// the kernel having refused the flag), as the journal's are.
	DSync bool `json:"write_rwf_dsync"`
}

// measureDisk measures, once before the runs and back to back, the writes the c=1 yardstick
// measures each round (diskProbe): brokerd's own durable write and a bbolt commit.
func measureDisk(dir string) (d diskInfo, err error) {
	p, err := openDiskProbe(dir)
	if err != nil {
		return d, err
	}
	defer p.close()
	lats, _, err := timeLoop(p.write, 200, 0)
	if err != nil {
		return d, err
	}
	d.FdatasyncP50, d.FdatasyncP99 = quantile(lats, 0.5), quantile(lats, 0.99)
	if lats, _, err = timeLoop(p.commit, 100, 0); err != nil {
		return d, err
	}
	d.CommitP50, d.CommitP99 = quantile(lats, 0.5), quantile(lats, 0.99)
	d.DSync = p.file.DSync()
	return d, nil
}

// The c=1 yardstick. On a disk with a write-back cache (a virtio disk here) a sync costs more the
// longer the disk was idle before it: a bbolt commit measured back to back is the cheapest a commit
// ever is, not what the lone call of a c=1 cell pays, which finds the disk idle since the previous
// call. So the yardstick is measured at the cell's own pace too, inside the zero-delay c=1 rounds
// (right after each round's cells, so it sees the machine as they did).

const (
	// probeSamples is how many commits (and writes) each loop of a round's yardstick times.
	probeSamples = 150
	// probeBlock is the unit of the O_DIRECT writes, as the audit journal writes (store/journal.go).
	probeBlock = 4096
	// probeFileSize is the preallocated, zero-filled file the writes go to (the journal's size).
	probeFileSize = 1 << 20
)

// c1Disk is the c=1 yardstick: per round, and the median over rounds of each round's p50s.
type c1Disk struct {
	// PaceSource says where the paced loops' period came from.
	PaceSource string `json:"pace_source"`
	// WriteDirect is whether the 4 KiB writes went through O_DIRECT (false: the file system
	// refused it and they went through the page cache).
	WriteDirect bool `json:"write_o_direct"`
	// WriteDSync is whether they were made durable with RWF_DSYNC (false: write, then fdatasync).
	WriteDSync bool        `json:"write_rwf_dsync"`
	Samples    int         `json:"samples_per_loop"`
	Rounds     []diskRound `json:"rounds"`
	diskRound              // the median over rounds (its fields inline in JSON)
}

// diskRound is one round's yardstick: p50s of a bbolt commit (Update, one put) and of brokerd's
// own durable write (a 4 KiB write with RWF_DSYNC into a preallocated file), back to back and paced.
type diskRound struct {
	// Pace is the start-to-start period the paced loops aimed at; Period what they achieved (mean).
	Pace        time.Duration `json:"pace_ns"`
	Period      time.Duration `json:"paced_period_ns"`
	CommitB2B   time.Duration `json:"bbolt_commit_b2b_p50_ns"`
	CommitPaced time.Duration `json:"bbolt_commit_paced_p50_ns"`
	WriteB2B    time.Duration `json:"write_b2b_p50_ns"`
	WritePaced  time.Duration `json:"write_paced_p50_ns"`
}

// summarize sets the medians over rounds.
func (y *c1Disk) summarize() {
	pick := func(f func(diskRound) time.Duration) time.Duration {
		var xs []time.Duration
		for _, r := range y.Rounds {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	y.Pace = pick(func(r diskRound) time.Duration { return r.Pace })
	y.Period = pick(func(r diskRound) time.Duration { return r.Period })
	y.CommitB2B = pick(func(r diskRound) time.Duration { return r.CommitB2B })
	y.CommitPaced = pick(func(r diskRound) time.Duration { return r.CommitPaced })
	y.WriteB2B = pick(func(r diskRound) time.Duration { return r.WriteB2B })
	y.WritePaced = pick(func(r diskRound) time.Duration { return r.WritePaced })
}

// diskProbe is a bbolt database and a preallocated file in the work dir (the file system brokerd's
// database is on), kept open across rounds.
type diskProbe struct {
	*committer
	*journalWriter
	paths []string
}

// journalWriter is brokerd's own durable write for a lone call's audit record, with the audit
// journal's code (store.DurableFile): timed alone by the disk probe and inside a server by the
// floor+write mode.
type journalWriter struct {
	mu     sync.Mutex // one write at a time, as the journal's single writer makes them
	file   *store.DurableFile
	buf    []byte
	writes int64
}

// openJournalWriter creates path as the journal creates its file: zero-filled to its full size
// and synced once, so a write's sync flushes data only (no allocation, no size change).
func openJournalWriter(path string) (_ *journalWriter, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	w := &journalWriter{file: store.NewDurableFile(f)} // O_DIRECT where the file system takes it, as the journal
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if _, err = f.WriteAt(make([]byte, probeFileSize), 0); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err = w.file.Sync(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	w.buf = store.AlignedBuf(probeBlock)
	for i := range w.buf {
		w.buf[i] = 0xa5
	}
	return w, nil
}

// write is what the audit journal does for a lone call's record: one 4 KiB block written in place
// (the same block again until about eight ~500-byte records have filled it, then the next one) and
// made durable, with the journal's own code.
func (w *journalWriter) write() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	off := (w.writes / 8 * probeBlock) % probeFileSize
	w.writes++
	return w.file.WriteDurable(w.buf, off)
}

// close takes the write lock: a handler still in write when serve-floor stops (grpc's Stop does
// not wait for handlers) finishes first, and DurableFile, which may swap its descriptor inside a
// write, is not closed under it.
func (w *journalWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.file.Close()
}

// committer is a bbolt database that commits one small put per call: the "one bbolt commit" of
// the c=1 target, timed alone by the disk probe and inside a server by the floor+commit mode. It
// is the commit brokerd's store makes (its bbolt options, store/store.go: no free-page list
// written per commit, the map free list) on a database that stops growing after commitKeys
// commits (the puts cycle over a fixed set of keys), so the commit costs the same in every round
// and in both places, however many came before.
type committer struct {
	db  *bolt.DB
	val []byte
	seq uint64 // written inside the write transaction, which bbolt runs one at a time
}

var probeBucket = []byte("probe")

// commitKeys is how many keys the committer's puts cycle over: about the records of a page or
// two of tokens, so a put rewrites one leaf page, as a token update does.
const commitKeys = 1024

func openCommitter(path string) (*committer, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(probeBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &committer{db: db, val: make([]byte, 300)}, nil // about one token or audit record
}

// commit is one bbolt write transaction putting one small value under the next of commitKeys keys.
func (c *committer) commit() error {
	return c.db.Update(func(tx *bolt.Tx) error {
		c.seq++
		return tx.Bucket(probeBucket).Put(binary.BigEndian.AppendUint64(nil, c.seq%commitKeys), c.val)
	})
}

func (c *committer) close() error { return c.db.Close() }

func openDiskProbe(dir string) (p *diskProbe, err error) {
	p = &diskProbe{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	dbPath := filepath.Join(dir, "c1-commit.probe.db")
	p.paths = append(p.paths, dbPath)
	if p.committer, err = openCommitter(dbPath); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "c1-write.probe")
	p.paths = append(p.paths, path)
	if p.journalWriter, err = openJournalWriter(path); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *diskProbe) close() {
	if p.committer != nil {
		p.committer.close()
	}
	if p.journalWriter != nil {
		p.journalWriter.close()
	}
	for _, path := range p.paths {
		os.Remove(path)
	}
}

// measure times n commits and n writes, each back to back and paced: one started every pace.
func (p *diskProbe) measure(pace time.Duration, n int) (diskRound, error) {
	r := diskRound{Pace: pace}
	p50 := func(op func() error, pace time.Duration) (time.Duration, time.Duration, error) {
		lats, period, err := timeLoop(op, n, pace)
		return quantile(lats, 0.5), period, err
	}
	var periods [2]time.Duration
	var err error
	if r.CommitB2B, _, err = p50(p.commit, 0); err != nil {
		return r, fmt.Errorf("bbolt commit: %w", err)
	}
	if r.CommitPaced, periods[0], err = p50(p.commit, pace); err != nil {
		return r, fmt.Errorf("bbolt commit: %w", err)
	}
	if r.WriteB2B, _, err = p50(p.write, 0); err != nil {
		return r, fmt.Errorf("4 KiB durable write: %w", err)
	}
	if r.WritePaced, periods[1], err = p50(p.write, pace); err != nil {
		return r, fmt.Errorf("4 KiB durable write: %w", err)
	}
	r.Period = (periods[0] + periods[1]) / 2
	return r, nil
}

// timeLoop runs op n times and returns its latencies, sorted, and the mean start-to-start period. With pace > 0
// each op starts pace after the previous one started, the loop sleeping in between, so the disk is
// idle for pace minus the op's time, as it is between the durable writes of a c=1 cell's calls
// (one per call, a call every pace). An op that took longer than pace is followed at once, not by
// a burst that catches up: the cell's closed loop does not catch up either. The sleep's overshoot
// (tens of µs) is learnt and taken off the next sleep, so the period stays close to pace.
func timeLoop(op func() error, n int, pace time.Duration) (lats []time.Duration, period time.Duration, err error) {
	lats = make([]time.Duration, 0, n)
	first := time.Now()
	var next time.Time
	var early time.Duration // how much sooner than the target to wake: the sleep's mean overshoot
	for i := range n {
		if pace > 0 && i > 0 {
			if wake := next.Add(-early); time.Until(wake) > 0 {
				sleepUntil(wake)
				early += (time.Since(wake) - early) / 4
			}
		}
		t0 := time.Now()
		if err := op(); err != nil {
			return nil, 0, err
		}
		lats = append(lats, time.Since(t0))
		next = t0.Add(pace)
	}
	period = time.Since(first) / time.Duration(n)
	slices.Sort(lats)
	return lats, period, nil
}

// sleepUntil sleeps until t in the kernel (clock_nanosleep): time.Sleep waits for the runtime's
// poller, whose timeout has millisecond resolution (here time.Sleep(950µs) took 1.09 ms and
// time.Sleep(1.3ms) 2.18 ms), which would pace the loop at up to twice the cell's period and let
// the disk idle for longer than it does between the cell's calls. The thread blocks either way:
// no CPU is spent and no I/O is issued while waiting.
func sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(int64(d))
		if err := unix.Nanosleep(&ts, nil); err == nil {
			return
		}
		// EINTR (the runtime's preemption signal): sleep for what is left.
	}
}
