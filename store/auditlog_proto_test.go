package store

// A prototype, not store code: the audit log out of bbolt, in an append-only file of its own,
// hash-chained as today (each record's body holds the MAC of the one before it), one write and one
// fdatasync per group of records, the way write-ahead logs commit. It measures what issue 20 asks
// about before adopting it: BenchmarkAuditLogFile against BenchmarkAppendAudit (bbolt: one
// transaction, two fdatasyncs, per group).
//
//	go test -run '^$' -bench 'BenchmarkAuditLogFile|BenchmarkAppendAudit/sync' -benchtime 2000x ./store/
//
// Not prototyped: recovery (a torn last group is cut at the first record whose length or MAC
// fails), the chain head a token record's stamp is checked against (it would be the log's last
// record instead of meta/audit_head), retention (a new file per segment, old segments deleted,
// the anchor in the next one) and the two-file crash consistency a state change and its record
// need (today they share one bbolt transaction: with the log apart, the record must be durable
// before the state change commits, and a change whose record landed but which did not must be
// told apart at recovery).

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/store/internal/benchdisk"
)

type logFileWriter struct {
	f    *os.File
	w    *auditWriter // for sealRecord: the same encoding and MAC as the bbolt log
	reqs chan *auditReq
	done chan struct{}
	seq  uint64
	prev []byte
	buf  []byte
	// off is where the next group is written when the file was zero-filled ahead (prezeroed): the
	// writes then overwrite allocated blocks and fdatasync has no metadata to flush with them.
	off       int64
	prezeroed bool
}

func newLogFileWriter(b *testing.B, prezeroed bool) *logFileWriter {
	h, err := keyset.NewHandle(mac.HMACSHA256Tag256KeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	m, err := mac.New(h)
	if err != nil {
		b.Fatal(err)
	}
	flags := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if prezeroed {
		flags = os.O_CREATE | os.O_WRONLY
	}
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "audit.log"), flags, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if prezeroed {
		if _, err := f.Write(make([]byte, 64<<20)); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	l := &logFileWriter{f: f, prezeroed: prezeroed, w: &auditWriter{mac: m, rmac: newRecordMAC(h, m)}, reqs: make(chan *auditReq, maxAuditBatch), done: make(chan struct{})}
	go l.run()
	b.Cleanup(func() { close(l.reqs); <-l.done; f.Close() })
	return l
}

func (l *logFileWriter) run() {
	defer close(l.done)
	for first := range l.reqs {
		batch := []*auditReq{first}
	drain:
		for len(batch) < maxAuditBatch {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		err := l.commit(batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

// commit appends batch as <4-byte length><stored value> records and makes them durable with one
// fdatasync.
func (l *logFileWriter) commit(batch []*auditReq) error {
	l.buf = l.buf[:0]
	seq, prev := l.seq, l.prev
	for _, r := range batch {
		seq++
		r.rec.Seq, r.rec.Prev = seq, prev
		val, tag, err := l.w.sealRecord(&r.rec)
		if err != nil {
			return err
		}
		l.buf = binary.BigEndian.AppendUint32(l.buf, uint32(len(val)))
		l.buf = append(l.buf, val...)
		prev = tag
	}
	if l.prezeroed {
		if _, err := l.f.WriteAt(l.buf, l.off); err != nil {
			return err
		}
		l.off += int64(len(l.buf))
	} else if _, err := l.f.Write(l.buf); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		return err
	}
	l.seq, l.prev = seq, prev
	return nil
}

func (l *logFileWriter) append(ctx context.Context, rec AuditRecord) error {
	r := &auditReq{rec: rec, done: make(chan error, 1)}
	l.reqs <- r
	return <-r.done
}

func BenchmarkAuditLogFile(b *testing.B) {
	ctx := context.Background()
	for _, how := range []string{"append", "prezeroed"} {
		for _, c := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", how, c), func(b *testing.B) {
				l := newLogFileWriter(b, how == "prezeroed")
				benchdisk.Measure(b)
				if c == 1 {
					for i := 0; b.Loop(); i++ {
						if err := l.append(ctx, searchAudit(i)); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				parallel(b, c, func(i int) {
					if err := l.append(ctx, searchAudit(i)); err != nil {
						b.Error(err)
					}
				})
			})
		}
	}
}
