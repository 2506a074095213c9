package attest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/peercred"
)

// digestMarker is printed by the helper, so it is in the test binary; a copy with its last
// byte changed is the same size and runs, printing the new marker.
var digestMarker = "attest-digest-marker:A"

// TestMain runs the test binary as a helper process when asked to: it prints digestMarker, then
// waits for stdin to close.
func TestMain(m *testing.M) {
	if os.Getenv("ATTEST_DIGEST_HELPER") == "1" {
		fmt.Println(digestMarker)
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runHelper starts exe as the helper and returns it with the line it printed; stop ends it.
func runHelper(t *testing.T, exe string) (pid int32, line string, stop func()) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = []string{"ATTEST_DIGEST_HELPER=1"}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		in.Close()
		t.Fatalf("helper printed nothing (exit %v)", cmd.Wait())
	}
	return int32(cmd.Process.Pid), sc.Text(), func() { in.Close(); cmd.Wait() }
}

// digestOf attests the running process pid and returns its executable's digest.
func digestOf(t *testing.T, pid int32) string {
	t.Helper()
	st, err := peercred.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Pin(pid, st, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	proc, err := p.InspectContext(context.Background(), uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := proc.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDigestSeesInPlaceRewrite: an executable rewritten in place (same inode, same size) with its
// modification time put back, which the file's owner may do (utimensat), is hashed again: a
// --pin-exe registration must not admit the new program on the old program's cached digest.
// The change time (ctime), which no one but the clock sets, tells the two apart.
func TestDigestSeesInPlaceRewrite(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(exe, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	pid, line, stop := runHelper(t, exe)
	if line != digestMarker {
		stop()
		t.Fatalf("helper printed %q, want %q", line, digestMarker)
	}
	pinned := digestOf(t, pid)
	stop()
	if want, _ := FileSHA256(exe); pinned != want {
		t.Fatalf("digest %s, want the file's %s", pinned, want)
	}

	// The owner rewrites the file in place (a write is refused while it runs: ETXTBSY) and puts
	// its modification time back.
	before, err := os.Stat(exe)
	if err != nil {
		t.Fatal(err)
	}
	changed := []byte(digestMarker[:len(digestMarker)-1] + "B")
	evil := bytes.ReplaceAll(raw, []byte(digestMarker), changed)
	if bytes.Equal(evil, raw) {
		t.Fatal("marker not found in the test binary")
	}
	f, err := os.OpenFile(exe, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(evil, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ctime := func(fi os.FileInfo) syscall.Timespec { return fi.Sys().(*syscall.Stat_t).Ctim }
	var after os.FileInfo
	for {
		// Each utimensat sets the change time to now; repeat until the clock's tick shows it
		// (coarse file timestamps may not have moved since the copy was written).
		if err := os.Chtimes(exe, time.Time{}, before.ModTime()); err != nil {
			t.Fatal(err)
		}
		if after, err = os.Stat(exe); err != nil {
			t.Fatal(err)
		}
		if ctime(after) != ctime(before) {
			break
		}
	}
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() ||
		after.Sys().(*syscall.Stat_t).Ino != before.Sys().(*syscall.Stat_t).Ino {
		t.Fatalf("rewrite changed more than the content: %v %d -> %v %d", before.ModTime(), before.Size(), after.ModTime(), after.Size())
	}

	pid, line, stop = runHelper(t, exe)
	defer stop()
	if line != string(changed) {
		t.Fatalf("rewritten program printed %q, want %q", line, changed)
	}
	got := digestOf(t, pid)
	want, err := FileSHA256(exe)
	if err != nil {
		t.Fatal(err)
	}
	if got == pinned || got != want {
		t.Fatalf("rewritten executable: digest %s, want its own %s (the pinned one was %s)", got, want, pinned)
	}
}

// TestDigestRefusesHugeExecutable: a program padded to more than maxExeSize (a sparse file costs
// its owner nothing, and runs) is refused with a message saying what to register instead, not
// read to the end: hashing a terabyte would cost brokerd minutes of CPU per FetchToken.
func TestDigestRefusesHugeExecutable(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "huge")
	if err := os.WriteFile(exe, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(exe, maxExeSize+1); err != nil {
		t.Skip("no sparse file of 1 GiB here:", err)
	}
	pid, line, stop := runHelper(t, exe)
	defer stop()
	if line != digestMarker {
		t.Fatalf("padded helper printed %q, want %q", line, digestMarker)
	}
	st, err := peercred.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Pin(pid, st, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	proc, err := p.InspectContext(context.Background(), uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := proc.Digest()
	if err == nil || !strings.Contains(err.Error(), "more than the 1024 MiB brokerd hashes") || !strings.Contains(err.Error(), "--exe") {
		t.Fatalf("digest of a %d-byte executable: %q, %v; want a refusal naming the limit", maxExeSize+1, d, err)
	}
}

// TestDigestOneAtATimePerUID: a uid's executables are hashed one at a time, so its thousands of
// concurrent FetchTokens (no token needed), each with a different file to defeat the cache, cost
// brokerd one core at most, not all of them; another uid is not held up; and a call that ends
// while it waits is not hashed for.
func TestDigestOneAtATimePerUID(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for i := range 3 {
		f := filepath.Join(dir, fmt.Sprintf("prog%d", i))
		if err := os.WriteFile(f, bytes.Repeat([]byte{byte(i)}, 1<<20), 0o755); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	st, err := peercred.StartTime(int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Pin(int32(os.Getpid()), st, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	entered, release := make(chan uint32, 3), make(chan struct{})
	hashing = func(uid uint32) {
		entered <- uid
		if uid == 7 {
			<-release
		}
	}
	defer func() { hashing = nil }()
	c := &digestCache{m: make(map[fileKey]string), turns: make(map[uint32]*uidTurn)}
	type result struct {
		d   string
		err error
	}
	sum := func(ctx context.Context, path string, uid uint32) <-chan result {
		out := make(chan result, 1)
		go func() {
			d, err := c.sum(ctx, path, p, uid)
			out <- result{d, err}
		}()
		return out
	}

	first := sum(context.Background(), files[0], 7)
	if uid := <-entered; uid != 7 {
		t.Fatalf("first hash by uid %d", uid)
	}
	// Another uid hashes meanwhile.
	if r := <-sum(context.Background(), files[1], 8); r.err != nil || <-entered != 8 {
		t.Fatalf("uid 8 while uid 7 hashes: %v", r.err)
	}
	// The same uid waits its turn; its call ends while it waits, and nothing is hashed for it.
	ctx, cancel := context.WithCancel(context.Background())
	second := sum(ctx, files[2], 7)
	cancel()
	select {
	case r := <-second:
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("a call that ended while it waited: %q, %v", r.d, r.err)
		}
	case uid := <-entered:
		t.Fatalf("uid %d hashed a second executable while its first was being hashed", uid)
	}
	close(release)
	if r := <-first; r.err != nil || len(r.d) != 64 {
		t.Fatalf("first hash: %q, %v", r.d, r.err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.turns) != 0 {
		t.Fatalf("turns left behind: %v", c.turns)
	}
}

// The size bound holds for what is hashed, not only for what stat said: a file that grows while
// brokerd hashes it is refused, not read on (past maxExeSize) nor named by a digest of neither
// version.
func TestDigestRefusesAFileThatGrewWhileHashed(t *testing.T) {
	r := &ctxReader{ctx: context.Background(), r: strings.NewReader("0123456789"), left: 4}
	if _, err := readerSHA256(r); err == nil || !strings.Contains(err.Error(), "grew while brokerd hashed it") {
		t.Fatalf("hashing 10 bytes of a file stat'ed at 4: %v, want refused", err)
	}
	r = &ctxReader{ctx: context.Background(), r: strings.NewReader("0123"), left: 4}
	if d, err := readerSHA256(r); err != nil || d == "" {
		t.Fatalf("hashing a file of its stat'ed size: %q, %v", d, err)
	}
}
