package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// brokerd makes itself non-dumpable (PR_SET_DUMPABLE 0: its memory and /proc/PID/environ out of
// reach of other processes of its uid) before it reads its first secret, the upstream proxy's
// password file; it used to read it first. Checked on the real process under strace: the prctl
// comes before the open of the file.
func TestHardenedBeforeTheFirstSecretIsRead(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (apt-get install strace): it shows the order of the calls")
	}
	if out, err := exec.Command(strace, "-qq", "-o", "/dev/null", "true").CombinedOutput(); err != nil {
		t.Skipf("strace cannot trace here (%v: %s)", err, out)
	}
	e := newEnv(t)
	auth := filepath.Join(e.dir, "proxy-auth")
	if err := os.WriteFile(auth, []byte("alice:pr0xy-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(e.dir, "harden.trace")
	cmd := e.daemonCmd("--upstream-proxy", "http://127.0.0.1:9", "--upstream-proxy-auth-file", auth)
	cmd.Args = append([]string{strace, "-f", "-qq", "-o", trace, "-e", "trace=prctl,openat", "--"}, cmd.Args...)
	cmd.Path = strace
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
	e.stopTraced(t)
	raw, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	harden, read := -1, -1
	for i, line := range strings.Split(string(raw), "\n") {
		if harden < 0 && (strings.Contains(line, "PR_SET_DUMPABLE, SUID_DUMP_DISABLE") || strings.Contains(line, "PR_SET_DUMPABLE, 0")) {
			harden = i
		}
		if read < 0 && strings.Contains(line, "openat(") && strings.Contains(line, auth) {
			read = i
		}
	}
	switch {
	case read < 0:
		t.Fatalf("the proxy's password file was never opened; trace:\n%s", raw)
	case harden < 0:
		t.Fatalf("brokerd never made itself non-dumpable; trace:\n%s", raw)
	case harden > read:
		t.Fatalf("brokerd read the proxy's password (trace line %d) before it made itself non-dumpable (line %d)", read+1, harden+1)
	}
}
