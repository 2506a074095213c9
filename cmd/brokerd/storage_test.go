package main

// Storage faults: the disk fills up under brokerd (a 2 MiB tmpfs), the database sits on a
// read-only mount, or the file is truncated or garbage. brokerd must fail clearly, corrupt
// nothing, recover when space returns, and never overwrite a file it cannot read.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/client"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// mountTmpfs mounts a tmpfs of size at dir, or skips the test saying why it cannot.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s); the disk-full path is covered by store-level fault injection only", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", dir).Run()
			t.Logf("umount %s: %v %s", dir, err, out)
		}
	})
}

// dbOnTmpfs mounts a tmpfs of size at a "data" directory of e's and moves e's database there
// (before brokerd starts); it returns the directory.
func (e *env) dbOnTmpfs(t *testing.T, size string) string {
	t.Helper()
	data := filepath.Join(e.dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, data, size)
	e.db = filepath.Join(data, "broker.db")
	return data
}

// fillDisk writes zeros to a file in dir until the filesystem is full and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			return path
		}
	}
}

func TestDiskFull(t *testing.T) {
	e := newEnv(t)
	data := e.dbOnTmpfs(t, "3m") // the database, and the audit journal's 1 MiB (store/journal.go)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	e.search(t, tok, "before the disk fills").ok(t)

	ac, sc := e.client(t), e.client(t, client.WithToken(tok))
	ctx := context.Background()
	value := bytes.Repeat([]byte("v"), 8<<10) // the largest value brokerd accepts

	filler := fillDisk(t, data)
	var acked []string
	var writeErr error
	var failedName string
	for i := range 200 {
		name := fmt.Sprintf("full-%d", i)
		if _, err := ac.PutCredential(ctx, name, value); err != nil {
			writeErr, failedName = err, name
			break
		}
		acked = append(acked, name)
	}
	if writeErr == nil {
		t.Fatal("200 writes of 8 KiB succeeded on a full 3 MiB tmpfs")
	}
	t.Logf("disk full: %d puts of 8 KiB succeeded after the disk filled, then: %v", len(acked), writeErr)
	// Either the write itself failed ("… because its disk is full; nothing was changed …") and
	// its audit record fit in a reused page, or the audit record failed too ("… cannot write its
	// audit log …").
	if msg := writeErr.Error(); !strings.Contains(msg, "disk is full") && !strings.Contains(msg, "audit log") {
		t.Errorf("a failed write should say why (disk full, or audit log unavailable): %v", writeErr)
	}

	// What still works with the disk full. Every credbroker call is audited before it answers,
	// so calls whose audit record needs a new page fail closed; a record that fits in a page
	// bbolt can reuse still commits. Health checks are not audited. Status is read-only and is
	// how the operator learns the audit log is failing: it always answers, and says why.
	outcomes := map[string]int{}
	for range 20 {
		_, err := sc.Search(ctx, &pb.SearchRequest{Query: "disk full"})
		outcomes["search: "+outcome(err)]++
		_, err = ac.Status(ctx)
		outcomes["status: "+outcome(err)]++
	}
	t.Logf("disk full, 20 searches and 20 status calls: %v; health SERVING: %v", outcomes, healthy(e.socket))
	if outcomes["status: OK"] != 20 {
		t.Errorf("status must answer while the disk is full (issue 16 item 4): %v", outcomes)
	}
	if r := e.ctl(t, "", "status").ok(t); !strings.Contains(r.stdout, "the disk holding the database is full") {
		t.Errorf("brokerctl status while the disk is full does not say so:\n%s", r.stdout)
	}

	// Space returns: the very first call works again, without a restart (it used to be refused
	// on the news of the last failed write, and only its own refusal record reopened the gate).
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Search(ctx, &pb.SearchRequest{Query: "first after space returns"}); err != nil {
		t.Fatalf("the first search after space returned was refused: %v\n%s", err, lastLines(e.stderr.String(), 5))
	}
	if _, err := ac.PutCredential(ctx, "after-space-returns", value); err != nil {
		t.Fatalf("brokerd did not recover when space returned: %v\n%s", err, e.stderr.String())
	}
	acked = append(acked, "after-space-returns")
	if r := e.ctl(t, "", "status").ok(t); strings.Contains(r.stdout, "database is full") || strings.Contains(r.stdout, "audit log cannot") {
		t.Errorf("brokerctl status still says the disk is full or the audit log failing after space returned:\n%s", r.stdout)
	}
	if _, err := sc.Search(ctx, &pb.SearchRequest{Query: "space returned"}); err != nil {
		t.Fatalf("search after space returned: %v", err)
	}
	if r := e.ctl(t, "", "audit", "verify").ok(t); !strings.Contains(r.stdout, "audit log OK") {
		t.Fatalf("audit verify after the disk-full episode: %s", r.stdout)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, e.stderr.String())
	}

	// Nothing corrupted: bbolt's check on the raw file, the store's checks, and every
	// acknowledged write is there.
	if err := boltCheckReadOnly(e.db); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	defer st.Close()
	v := checkStoreConsistent(t, st)
	for _, name := range acked {
		if _, _, err := st.LoadCredential(name); err != nil {
			t.Errorf("acknowledged credential %s: %v", name, err)
		}
	}
	if _, _, err := st.LoadCredential(failedName); err == nil {
		if strings.Contains(writeErr.Error(), "nothing was changed") {
			t.Errorf("the put answered %q is stored", writeErr)
		} else {
			t.Logf("the put answered Unavailable is stored: it was applied, then its audit record failed (RELIABILITY.md finding 1)")
		}
	}
	t.Logf("after recovery: bbolt check OK, audit chain OK (%d records), %d acknowledged credentials present", v.Checked, len(acked))
}

// The disk fills up, brokerd is killed while it is full and restarted while it still is: it starts
// (opening needs no new pages), the file is consistent, and the data is all there.
func TestDiskFullKillRestart(t *testing.T) {
	e := newEnv(t)
	data := e.dbOnTmpfs(t, "3m") // the database, and the audit journal's 1 MiB (store/journal.go)
	e.startDaemon(t)
	tok, _ := e.setup(t)
	filler := fillDisk(t, data)
	ac := e.client(t)
	value := bytes.Repeat([]byte("w"), 8<<10)
	for i := range 200 {
		if _, err := ac.PutCredential(context.Background(), fmt.Sprintf("w-%d", i), value); err != nil {
			break
		}
	}
	ac.Close()
	e.stop(t, syscall.SIGKILL)
	if err := boltCheckReadOnly(e.db); err != nil {
		t.Fatalf("after kill -9 on a full disk: %v", err)
	}
	cmd := e.daemonCmd()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	started := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && e.daemonRunning(); time.Sleep(50 * time.Millisecond) {
		if healthy(e.socket) {
			started = true
			break
		}
	}
	if !started {
		t.Fatalf("brokerd did not start on the still-full disk (RELIABILITY.md says it does); log tail: %s", lastLines(e.stderr.String(), 3))
	}
	os.Remove(filler)
	r := e.search(t, tok, "after restart")
	t.Logf("search after restart (space returned): err=%v", r.err)
	if r.err != nil {
		// The search may be refused only while the disk is full; with space back it must work.
		e.search(t, tok, "again").ok(t)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	defer st.Close()
	checkStoreConsistent(t, st)
}

func (e *env) daemonRunning() bool {
	return e.daemon.ProcessState == nil && e.daemon.Process.Signal(syscall.Signal(0)) == nil
}

func outcome(err error) string {
	if err == nil {
		return "OK"
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Code.String()
	}
	return err.Error()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// runBrokerdExpectExit starts brokerd on db and returns its output and exit error, failing the
// test if it is still running after timeout (a refusal must be fast).
func (e *env) runBrokerdExpectExit(t *testing.T, db string, timeout time.Duration) (string, error) {
	t.Helper()
	cmd := e.daemonCmd()
	for i, a := range cmd.Args {
		if a == "--db" {
			cmd.Args[i+1] = db
		}
	}
	var out logtest.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("brokerd did not exit on a bad database within %s; output:\n%s", timeout, out.String())
		return "", nil
	}
}

// A database on a read-only mount: brokerd refuses to start with the reason, and the file is
// untouched.
func TestReadOnlyDatabaseRefused(t *testing.T) {
	e := newEnv(t)
	data := filepath.Join(e.dir, "data")
	ro := filepath.Join(e.dir, "ro")
	for _, d := range []string{data, ro} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mountTmpfs(t, data, "8m")
	e.db = filepath.Join(data, "broker.db")
	e.startDaemon(t)
	e.setup(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", "-o", "ro", data, ro).CombinedOutput(); err != nil {
		t.Skipf("cannot make a read-only bind mount: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", ro).Run() })
	exec.Command("mount", "-o", "remount,bind,ro", ro).Run() // older mount(8) ignores ro on the first call
	before, _ := os.ReadFile(e.db)
	out, err := e.runBrokerdExpectExit(t, filepath.Join(ro, "broker.db"), 15*time.Second)
	t.Logf("read-only mount: exit=%v output=%q", err, lastLines(out, 1))
	if err == nil || !strings.Contains(out, "read-only file system") {
		t.Fatalf("brokerd on a read-only database: exit %v, output:\n%s", err, out)
	}
	if after, _ := os.ReadFile(e.db); !bytes.Equal(before, after) {
		t.Fatal("the database changed")
	}
}

// A truncated or garbage database file: brokerd refuses to start with a clear message and leaves
// the bytes exactly as they were.
func TestCorruptDatabaseRefused(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	e.setup(t)
	for i := range 50 { // enough records for several pages
		e.ctl(t, fmt.Sprintf("value-%d\n", i), "credential", "put", fmt.Sprintf("cred-%d", i)).ok(t)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(e.db)
	if err != nil {
		t.Fatal(err)
	}
	const page = 4096
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	cases := []struct {
		name    string
		content []byte
		wantMsg string
	}{
		{"truncated to half", good[:len(good)/2], "restore it from a backup"},
		{"truncated to one page", good[:page], "file size too small"},
		{"truncated to 100 bytes", good[:100], "invalid database"},
		{"garbage of the same size", random(len(good)), "invalid database"},
		{"both meta pages zeroed", append(make([]byte, 2*page), good[2*page:]...), "invalid database"},
		{"in-use pages 2-9 overwritten with garbage", append(append(append([]byte{}, good[:2*page]...), random(8*page)...), good[10*page:]...), "restore it from a backup"},
		{"text file", []byte("this is not a database\n"), "invalid database"},
		{"empty file", []byte{}, "the file is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(e.dir, "bad.db")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := e.runBrokerdExpectExit(t, path, 5*time.Second)
			t.Logf("%s: exit=%v output=%q", tc.name, err, lastLines(out, 1))
			if err == nil || !strings.Contains(out, tc.wantMsg) {
				t.Fatalf("brokerd on a %s database: exit %v, output:\n%s", tc.name, err, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Fatalf("brokerd crashed instead of refusing:\n%s", out)
			}
			after, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(after, tc.content) {
				t.Fatalf("brokerd changed the file it refused (%d -> %d bytes, %v)", len(tc.content), len(after), err)
			}
		})
	}
}
