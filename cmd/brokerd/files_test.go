package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// brokerd refuses a --db that is a symbolic link, and a master keyset owned by another user,
// with a message that says what to do, and changes nothing.
func TestStartupRefusesUnsafeFiles(t *testing.T) {
	e := newEnv(t)
	bd := filepath.Join(binDir, "brokerd")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bd, append([]string{"--socket", e.socket, "--upstream-url", e.fake.URL}, args...)...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("brokerd %v started, want a refusal", args)
		}
		return string(out)
	}

	// A link where the database should be: its target (here a file that is not a database,
	// world-readable) is neither chmodded nor opened.
	target := filepath.Join(e.dir, "notes.txt")
	os.WriteFile(target, []byte("not a database"), 0o644)
	link := filepath.Join(e.dir, "linked.db")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	out := run("--db", link, "--master-keyset", e.keyset)
	if !strings.Contains(out, "is a symbolic link") || !strings.Contains(out, "give the real path with --db") {
		t.Fatalf("db symlink: %s", out)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o644 {
		t.Errorf("the link's target was chmodded to %v", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(target); !bytes.Equal(b, []byte("not a database")) {
		t.Error("the link's target was changed")
	}

	if os.Geteuid() != 0 {
		t.Skip("giving the keyset to another uid needs root")
	}
	if err := os.Chown(e.keyset, 65534, -1); err != nil {
		t.Fatal(err)
	}
	out = run("--db", e.db, "--master-keyset", e.keyset)
	if !strings.Contains(out, "master keyset "+e.keyset+" is owned by uid 65534") {
		t.Fatalf("keyset of another user: %s", out)
	}
	if _, err := os.Stat(e.db); !os.IsNotExist(err) {
		t.Errorf("a refused start created the database: %v", err)
	}
}
