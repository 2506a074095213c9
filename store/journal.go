package store

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
)

// The audit journal takes the durable write of an audited call out of bbolt (issue 20). A bbolt
// commit is two fdatasyncs and rewrites every page from the audit leaf up to the root and the meta
// bucket's head (~32 KiB per lone record); an append to a file that is already allocated is one
// write and one fdatasync with no metadata to flush. So a group of records that changes no other
// state (a Search's record) is sealed into the chain exactly as before and written here; every so
// often (checkpoint) the writer moves the journal's records into the audit bucket in one bbolt
// transaction, which also moves the MACed chain head, and starts the journal over. Records that
// come with a state change (a mint, an admin call: auditReq.apply) still commit with their change
// in one bbolt transaction, which checkpoints the journal first, so the chain stays one sequence.
//
// The file is <db>.audit-journal: an 8-byte magic, then frames <4-byte length><4-byte CRC-32C of
// the payload><payload>, the payload being the record's value exactly as the audit bucket stores
// it (<tag length><MAC><body>). It is zero-filled to its full size when created and written in
// place, never grown, so a commit's fdatasync flushes data only. A frame of length 0 is the end.
//
// Groups are written as whole 4 KiB blocks (the last partial block again, with the new frames and
// zeros after them) with O_DIRECT where the file system supports it. Through the page cache, on
// this kernel, the zero-filled file sat in large folios: dirtying 600 bytes made the whole 1 MiB
// folio dirty and every fdatasync wrote 1 MiB (measured with /proc/self/io: 1,048,576 bytes per
// append, against 4,096 with O_DIRECT; fdatasync p50 80 µs either way on an idle disk, far more
// under load). File systems without O_DIRECT (tmpfs) take the same block writes buffered.
//
// Recovery (openAudit) replays the frames that continue the database's chain head: the first
// frame must be the record after the head, and each next one the record after it, MAC verified.
// It stops at the first frame that is torn (length out of range or CRC wrong: the last group's
// write did not finish, and its callers were never answered) or older than the record before it
// (a frame of an earlier round, left behind when the journal started over). A frame whose CRC holds
// but whose MAC does not, or that skips records, was written by something other than brokerd:
// ErrTampered. What a journal cannot show is a tail cut off at a frame boundary; the records
// written since the last checkpoint (at most Options.AuditCheckpointInterval) could be removed that
// way unnoticed, unless a token or credential record stamped with their seq exists (checkIntegrity
// finds those). README.md ("Audit.") says so.

const (
	journalMagic     = "cbaudj01"
	journalFrameHead = 8 // length and CRC
	// journalSize is the file's size: zero-filled once. A group that does not fit checkpoints.
	journalSize = 1 << 20
	// journalCheckpointBytes and journalCheckpointRecords start a checkpoint after a group once
	// the journal holds this much, well before it is full, so a burst rarely waits on one.
	journalCheckpointBytes   = journalSize / 2
	journalCheckpointRecords = 1024
	// maxJournalFrame bounds a frame's length on reading: far above any record (brokerd's
	// strings are bounded), far below the file.
	maxJournalFrame = 64 << 10
)

var journalCRC = crc32.MakeTable(crc32.Castagnoli)

// JournalPath is the audit journal's path for the database at dbPath.
func JournalPath(dbPath string) string { return dbPath + ".audit-journal" }

// journalBlock is the unit of a journal write: O_DIRECT needs offsets, lengths and buffers
// aligned to the device's logical block (512 or 4096 bytes).
const journalBlock = 4096

type journal struct {
	DurableFile // f is read at recovery; groups are written through it (WriteDurable)
	path        string
	off         int64  // where the next group is written
	buf         []byte // journalBlock-aligned: the block at off's start (the bytes before off), then the group
}

// openJournal opens (or creates, zero-filled) the journal of the database at dbPath and returns
// it with its content, for recovery. The file gets the database's checks: not a symbolic link, a
// regular file owned by this uid, mode 0600.
func openJournal(dbPath string, noSync bool) (*journal, []byte, error) {
	path := JournalPath(dbPath)
	f, err := openDBFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("audit journal %s: %w", path, err)
	}
	j := &journal{DurableFile: newDurableFile(f, noSync), path: path}
	j.restart()
	fi, err := f.Stat()
	if err != nil {
		j.close()
		return nil, nil, fmt.Errorf("audit journal %s: %w", path, err)
	}
	if fi.Size() == 0 {
		if err := j.create(); err != nil {
			j.close()
			os.Remove(path)
			return nil, nil, fmt.Errorf("create audit journal %s: %w", path, err)
		}
		return j, nil, nil
	}
	if fi.Size() > 4*journalSize {
		j.close()
		return nil, nil, fmt.Errorf("%w: audit journal %s is %d bytes, larger than brokerd ever writes it", ErrTampered, path, fi.Size())
	}
	content, err := io.ReadAll(io.NewSectionReader(f, 0, fi.Size()))
	if err != nil {
		j.close()
		return nil, nil, fmt.Errorf("read audit journal %s: %w", path, err)
	}
	if !bytes.HasPrefix(content, []byte(journalMagic)) && neverWritten(content) {
		// A crash cut create short: the file's size reached the disk, its blocks did not (create
		// syncs before any record is written, so no record was ever in it). Start it over.
		if err := j.create(); err != nil {
			j.close()
			return nil, nil, fmt.Errorf("create audit journal %s: %w", path, err)
		}
		return j, nil, nil
	}
	if !bytes.HasPrefix(content, []byte(journalMagic)) {
		j.close()
		return nil, nil, fmt.Errorf("%w: %s is not a credbroker audit journal (unknown header)", ErrTampered, path)
	}
	if fi.Size() < journalSize {
		// Created by a brokerd that stopped while zero-filling it, or cut short: fill the rest, so
		// writes never extend the file.
		if _, err := f.WriteAt(make([]byte, journalSize-fi.Size()), fi.Size()); err != nil {
			j.close()
			return nil, nil, fmt.Errorf("audit journal %s: %w", path, err)
		}
		if err := j.Sync(); err != nil {
			j.close()
			return nil, nil, fmt.Errorf("audit journal %s: %w", path, err)
		}
	}
	return j, content, nil
}

// neverWritten reports whether content is what create leaves when a crash cuts it short: zeros,
// perhaps after the start of the magic.
func neverWritten(content []byte) bool {
	i := 0
	for i < len(content) && i < len(journalMagic) && content[i] == journalMagic[i] {
		i++
	}
	return len(bytes.TrimRight(content[i:], "\x00")) == 0
}

// orphanJournal refuses to create a database at dbPath beside an audit journal that holds
// something: it is a removed or moved database's, whose audit key a new database does not have
// (recovery would call its records edited, after creating the file). A journal that is not a
// regular file is left to openJournal's checks.
func orphanJournal(dbPath string) error {
	path := JournalPath(dbPath)
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if fi.Size() <= 4*journalSize {
		if content, err := os.ReadFile(path); err == nil && neverWritten(content) {
			return nil
		}
	}
	return fmt.Errorf("open database %s: it does not exist, but its audit journal %s does (the database was removed or moved?): put the database back beside it, or remove the journal to start a new database", dbPath, path)
}

// create zero-fills a new journal and writes its magic, durably (the file and its directory
// entry), so later commits write in place.
func (j *journal) create() error {
	buf := make([]byte, journalSize)
	copy(buf, journalMagic)
	if _, err := j.f.WriteAt(buf, 0); err != nil {
		return err
	}
	if j.noSync {
		return nil
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	return syncDir(j.path)
}

// syncDir makes path's directory entry durable.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fits reports whether n more bytes fit before the end of the file (a zero length after them
// ends the journal; the zero-filled file provides it until the last frame).
func (j *journal) fits(n int) bool { return j.off+int64(n)+journalFrameHead <= journalSize }

// full reports whether the journal holds enough to checkpoint.
func (j *journal) full() bool { return j.off >= journalCheckpointBytes }

// write makes frames (appendFrame's) durable at the end of the journal: the blocks from the one
// off is in to the one the frames end in, written whole (the bytes already there before off, the
// frames, zeros after them), then fdatasync. j.buf holds the bytes before off in off's block.
func (j *journal) write(frames []byte) error {
	start := j.off &^ (journalBlock - 1)
	head := int(j.off - start)
	end := head + len(frames)
	n := (end + journalBlock - 1) &^ (journalBlock - 1)
	if cap(j.buf) < n {
		nb := AlignedBuf(max(n, 2*cap(j.buf)))
		copy(nb, j.buf[:head])
		j.buf = nb
	}
	buf := j.buf[:n]
	copy(buf[head:], frames)
	clear(buf[end:])
	if err := j.WriteDurable(buf, start); err != nil {
		return err
	}
	j.off += int64(len(frames))
	// Keep the bytes before the new off in its block, at the front of buf, for the next group.
	if next := int(j.off&^(journalBlock-1) - start); next > 0 {
		copy(buf, buf[next:end])
	}
	return nil
}

// restart starts the journal over after a checkpoint: the frames in it are in the database now,
// and recovery tells them from new ones by their seq. Nothing is written: the next group
// overwrites them (with zeros after it to the end of its block).
func (j *journal) restart() {
	if j.buf == nil {
		j.buf = AlignedBuf(journalBlock)
	}
	j.off = int64(copy(j.buf, journalMagic))
}

// close is DurableFile's Close on a journal that may be nil (never opened).
func (j *journal) close() error {
	if j == nil {
		return nil
	}
	return j.Close()
}

// appendFrame appends val as a journal frame.
func appendFrame(dst, val []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(val)))
	dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(val, journalCRC))
	return append(dst, val...)
}

// journalRecord is a frame recovery accepted.
type journalRecord struct {
	seq uint64
	val []byte
	tag []byte
}

// recoverJournal returns the records in content (the journal file) that continue the chain
// after head, in order, each checked as described at the top of this file.
func (w *auditWriter) recoverJournal(path string, content []byte, head chainPoint) ([]journalRecord, error) {
	var out []journalRecord
	want := head
	off := len(journalMagic)
	for off+journalFrameHead <= len(content) {
		n := int(binary.BigEndian.Uint32(content[off:]))
		if n == 0 || n > maxJournalFrame || off+journalFrameHead+n > len(content) {
			break // the end, or a torn length
		}
		val := content[off+journalFrameHead : off+journalFrameHead+n]
		if crc32.Checksum(val, journalCRC) != binary.BigEndian.Uint32(content[off+4:]) {
			break // a torn write: never acknowledged
		}
		tag, body, err := w.split(val)
		if err != nil {
			return nil, fmt.Errorf("%w: audit journal %s: frame at byte %d: %v", ErrTampered, path, off, err)
		}
		if w.mac.VerifyMAC(tag, body) != nil {
			return nil, fmt.Errorf("%w: audit journal %s: the record at byte %d was edited (its MAC does not verify)", ErrTampered, path, off)
		}
		rec, err := DecodeAuditRecord(body)
		if err != nil {
			return nil, fmt.Errorf("%w: audit journal %s: the record at byte %d: %v", ErrTampered, path, off, err)
		}
		if rec.Seq <= want.Seq {
			break // a frame from before the last checkpoint: the journal's live part ended
		}
		if rec.Seq != want.Seq+1 {
			if len(out) == 0 {
				return nil, fmt.Errorf("%w: audit journal %s continues from record %d, but the database's audit chain head (record %d) is older than that: records %d..%d were removed, or the head was put back to an earlier value",
					ErrTampered, path, rec.Seq-1, want.Seq, want.Seq+1, rec.Seq-1)
			}
			return nil, fmt.Errorf("%w: audit journal %s: record %d follows record %d: records %d..%d are missing (removed)",
				ErrTampered, path, rec.Seq, want.Seq, want.Seq+1, rec.Seq-1)
		}
		if !hmac.Equal(rec.Prev, want.Prev) {
			return nil, fmt.Errorf("%w: audit journal %s: record %d does not follow record %d (replaced or reordered)", ErrTampered, path, rec.Seq, want.Seq)
		}
		out = append(out, journalRecord{seq: rec.Seq, val: bytes.Clone(val), tag: bytes.Clone(tag)})
		want = chainPoint{Seq: rec.Seq, Prev: out[len(out)-1].tag}
		off += journalFrameHead + n
	}
	return out, nil
}
