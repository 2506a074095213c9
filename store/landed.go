package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// ErrOutcomeUnknown: a write's commit failed and the database could not tell whether it landed.
// The caller must check (list the tokens, the credential's history) once brokerd has restarted.
var ErrOutcomeUnknown = errors.New("outcome unknown")

// ErrSyncFailed: an earlier commit became visible although its fdatasync failed, so what the disk
// holds is in doubt; the store takes no more writes until brokerd restarts and reads it again.
var ErrSyncFailed = errors.New("the database stopped taking writes after a disk error; restart brokerd")

// commitGuard decides, after a failed commit, whether the transaction landed. bbolt writes the
// meta page before its last fdatasync, so a Commit that returns an error can still be live
// (etcd-io/bbolt#233): answering "nothing changed" then contradicts the database (a token that
// exists, answered "not stored"). Like a database on fsync failure, the store then stops taking
// writes (fail-stop) and tells Options.OnFatal, so the daemon restarts and rereads the file.
type commitGuard struct {
	db      *bolt.DB
	onFatal func(error)
	stopped atomic.Bool
	once    sync.Once
	// fault, when a test sets it, fails the next commit as a failing disk would (commitFault).
	fault atomic.Pointer[commitFault]
}

// commitFault stands in for a disk that fails one commit (tests only): Commit reports an error
// although the transaction landed (bbolt wrote its meta page) or did not, and the read that tells
// which succeeds, or fails too (ErrOutcomeUnknown).
type commitFault struct {
	landed     bool
	unreadable bool
}

var errInjectedCommit = errors.New("injected commit failure")

// wrap returns run and view as the fault makes them behave for one transaction.
func (f *commitFault) wrap(run, view func(func(*bolt.Tx) error) error) (func(func(*bolt.Tx) error) error, func(func(*bolt.Tx) error) error) {
	faulty := func(fn func(*bolt.Tx) error) error {
		if f.landed {
			if err := run(fn); err != nil {
				return err
			}
			return errInjectedCommit
		}
		return run(func(tx *bolt.Tx) error {
			if err := fn(tx); err != nil {
				return err
			}
			return errInjectedCommit // rolled back: nothing lands
		})
	}
	if f.unreadable {
		view = func(func(*bolt.Tx) error) error { return errors.New("injected read failure") }
	}
	return faulty, view
}

// update runs fn in a write transaction through run (db.Update or db.Batch) and returns nil if it
// committed, or landed although Commit failed; fn's own error as it is; ErrOutcomeUnknown if the
// commit failed and the database could not be read to tell.
func (g *commitGuard) update(run func(func(*bolt.Tx) error) error, fn func(*bolt.Tx) error) error {
	if g.stopped.Load() {
		return ErrSyncFailed
	}
	view := g.db.View
	if f := g.fault.Swap(nil); f != nil {
		run, view = f.wrap(run, view)
	}
	var (
		txid  int
		fnErr error
	)
	err := run(func(tx *bolt.Tx) error {
		txid, fnErr = tx.ID(), fn(tx)
		return fnErr
	})
	if err == nil || fnErr != nil || txid == 0 {
		return err
	}
	var now int
	if verr := view(func(tx *bolt.Tx) error { now = tx.ID(); return nil }); verr != nil {
		g.fatal(fmt.Errorf("commit of transaction %d failed (%v) and the database cannot be read: %v", txid, err, verr))
		return fmt.Errorf("%w: the commit failed (%v) and brokerd cannot tell whether it landed", ErrOutcomeUnknown, err)
	}
	if now >= txid {
		// Live although not known to be on disk: report what the database says, then stop.
		g.fatal(fmt.Errorf("transaction %d became visible although its commit failed (%v); its durability is in doubt", txid, err))
		return nil
	}
	return err
}

// fatal stops writes and tells the daemon, once.
func (g *commitGuard) fatal(err error) {
	g.stopped.Store(true)
	g.once.Do(func() {
		if g.onFatal != nil {
			go g.onFatal(err) // never from inside a writer the daemon may wait on
		}
	})
}
