package attest

import (
	"bufio"
	"bytes"
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
	proc, err := p.Inspect(uint32(os.Getuid()), uint32(os.Getgid()), nil)
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
	proc, err := p.Inspect(uint32(os.Getuid()), uint32(os.Getgid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := proc.Digest()
	if err == nil || !strings.Contains(err.Error(), "more than the 1024 MiB brokerd hashes") || !strings.Contains(err.Error(), "--exe") {
		t.Fatalf("digest of a %d-byte executable: %q, %v; want a refusal naming the limit", maxExeSize+1, d, err)
	}
}
