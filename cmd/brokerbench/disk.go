package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
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
}

func measureDisk(dir string) (diskInfo, error) {
	var d diskInfo
	path := filepath.Join(dir, "fsync.probe")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return d, err
	}
	defer os.Remove(path)
	defer f.Close()
	page := make([]byte, 4096)
	var lats []time.Duration
	for i := range 200 {
		t0 := time.Now()
		if _, err := f.WriteAt(page, int64(i%16)*4096); err != nil {
			return d, err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return d, err
		}
		lats = append(lats, time.Since(t0))
	}
	slices.Sort(lats)
	d.FdatasyncP50, d.FdatasyncP99 = quantile(lats, 0.5), quantile(lats, 0.99)

	dbPath := filepath.Join(dir, "commit.probe.db")
	defer os.Remove(dbPath)
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return d, err
	}
	defer db.Close()
	lats = lats[:0]
	val := make([]byte, 300) // about one token record
	for i := range 100 {
		t0 := time.Now()
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("probe"))
			if err != nil {
				return err
			}
			return b.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), val)
		})
		if err != nil {
			return d, err
		}
		lats = append(lats, time.Since(t0))
	}
	slices.Sort(lats)
	d.CommitP50, d.CommitP99 = quantile(lats, 0.5), quantile(lats, 0.99)
	return d, nil
}
