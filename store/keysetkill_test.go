package store

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A `brokerctl keyset new/rotate/prune` killed in the middle of writing the keyset must not leave a
// truncated file at the keyset's path: brokerd refuses to load one and a re-run refuses to
// overwrite it, so the operator would have to find and delete it by hand. The writer runs as a
// real process under strace, which kills it (SIGKILL) at its first write(2), the keyset's
// contents; afterwards nothing is at the path, and a second run writes the keyset. Both ways of
// writing: an unnamed O_TMPFILE file, and the named temporary file of file systems without one.
func TestKilledKeysetWriteLeavesNoFile(t *testing.T) {
	if path := os.Getenv("CREDBROKER_KEYSET_KILL_HELPER"); path != "" {
		keysetTmpfile = os.Getenv("CREDBROKER_KEYSET_NAMED") == ""
		if err := NewMasterKeyset(path); err != nil {
			t.Fatal(err)
		}
		return
	}
	strace := straceOrSkip(t)
	for _, tc := range []struct {
		name  string
		named bool
	}{
		{"O_TMPFILE", false},
		{"named temporary file", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "master.json")
			trace := filepath.Join(t.TempDir(), "trace")
			env := append(os.Environ(), "CREDBROKER_KEYSET_KILL_HELPER="+path)
			if tc.named {
				env = append(env, "CREDBROKER_KEYSET_NAMED=1")
			}
			helper := []string{os.Args[0], "-test.run", "^TestKilledKeysetWriteLeavesNoFile$", "-test.count=1"}
			// -s 0: the trace need not hold the keyset's bytes.
			cmd := exec.Command(strace, append([]string{"-f", "-qq", "-y", "-s", "0", "-o", trace,
				"-e", "trace=write", "-e", "signal=none", "-e", "inject=write:signal=KILL", "--"}, helper...)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			raw, rerr := os.ReadFile(trace)
			if rerr != nil {
				t.Fatal(rerr)
			}
			// strace ends itself with the signal that killed the writer.
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the writer was not killed (%v): %s\ntrace:\n%s", err, out, raw)
			}
			// The kill must have hit the keyset's write, not some other first write: else the
			// test proves nothing.
			var writes []string
			for _, line := range strings.Split(string(raw), "\n") {
				if strings.Contains(line, " write(") {
					writes = append(writes, line)
				}
			}
			if len(writes) != 1 || !strings.Contains(writes[0], "<"+dir+"/") {
				t.Fatalf("want the writer killed at its one write, into %s; trace:\n%s", dir, raw)
			}
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("after a kill during the keyset's write, %s: %v; want no file there", path, err)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, e := range entries {
				left = append(left, e.Name())
				if !tc.named || !strings.HasPrefix(e.Name(), ".master.json.tmp-") {
					t.Errorf("unexpected %s left in the keyset's directory", e.Name())
					continue
				}
				info, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				if info.Mode().Perm()&0o077 != 0 {
					t.Errorf("leftover %s has mode %v; want no group or other bits", e.Name(), info.Mode().Perm())
				}
			}
			if tc.named && len(left) != 1 {
				t.Errorf("left in the keyset's directory: %q; want one .master.json.tmp-* file", left)
			}

			second := exec.Command(helper[0], helper[1:]...)
			second.Env = env
			if out, err := second.CombinedOutput(); err != nil {
				t.Fatalf("second run after the kill: %v: %s", err, out)
			}
			if _, err := LoadMasterKeyset(path); err != nil {
				t.Fatalf("keyset written by the second run: %v", err)
			}
		})
	}
}
