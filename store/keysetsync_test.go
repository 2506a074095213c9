package store

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A keyset file is the only copy of the key that opens the database once brokerd has re-wrapped
// under it (keyset rotate, then reload). Its directory entry must be durable before the command
// returns, as the audit journal's is (journal.go, create): fsyncing the file alone does not make
// its name survive a power loss on every file system. Checked on a real process under strace:
// NewMasterKeyset and RotateMasterKeyset fsync the keyset's directory.
func TestKeysetFileDirectorySynced(t *testing.T) {
	if path := os.Getenv("CREDBROKER_KEYSET_HELPER"); path != "" {
		if err := NewMasterKeyset(path); err != nil {
			t.Fatal(err)
		}
		if _, err := RotateMasterKeyset(path, path+".rotated"); err != nil {
			t.Fatal(err)
		}
		return
	}
	strace := straceOrSkip(t)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(dir, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(dir, "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-y", "-o", trace, "-e", "trace=fsync,fdatasync", "--",
		os.Args[0], "-test.run", "^TestKeysetFileDirectorySynced$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CREDBROKER_KEYSET_HELPER="+filepath.Join(keys, "master.json"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("NewMasterKeyset and RotateMasterKeyset under strace: %v: %s", err, out)
	}
	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var fileSyncs, dirSyncs int
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.Contains(line, "<"+keys+">)"):
			dirSyncs++
		case strings.Contains(line, "<"+keys+"/"):
			fileSyncs++
		}
	}
	if fileSyncs < 2 {
		t.Fatalf("want the two keyset files fsynced, saw %d syncs of them; trace:\n%s", fileSyncs, raw)
	}
	if dirSyncs < 2 {
		t.Fatalf("the directory %s was fsynced %d times, want once per keyset file written (2); trace:\n%s", keys, dirSyncs, raw)
	}
}

// straceOrSkip returns strace's path, or skips t where strace is missing or cannot trace. Whether
// strace can trace here at all (ptrace may be denied in a container) is asked apart from a
// helper's run: a helper that fails (the keyset write or its sync erroring) must fail its test,
// not skip it.
func straceOrSkip(t *testing.T) string {
	t.Helper()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("needs strace (CI installs it)")
	}
	if out, err := exec.Command(strace, "-f", "-qq", "-o", os.DevNull, "--", os.Args[0], "-test.run", "^$").CombinedOutput(); err != nil {
		t.Skipf("cannot run under strace here (%v): %s", err, out)
	}
	return strace
}
