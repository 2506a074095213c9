package main

// scripts/install.sh, run for real into a --destdir with the brokerd/brokerctl built for this
// package and a stand-in systemd-creds on PATH (encrypt wraps the input, decrypt unwraps it, or
// returns other bytes when FAKE_CREDS_BAD is set), so the keyset logic runs without touching /etc.

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var installScript = filepath.Join("..", "..", "scripts", "install.sh")

const fakeSystemdCreds = `#!/usr/bin/env bash
set -euo pipefail
cmd=$1; shift
name=""; args=()
for a in "$@"; do case $a in --name=*) name=${a#--name=} ;; *) args+=("$a") ;; esac; done
in=${args[0]}; out=${args[1]:--}
case $cmd in
  encrypt) { echo "FAKECRED $name"; base64 -w0 "$in"; echo; } >"$out" ;;
  decrypt)
    [[ "$(head -n1 "$in")" == "FAKECRED $name" ]] || { echo "fake systemd-creds: not a credential named $name" >&2; exit 1; }
    if [[ -n "${FAKE_CREDS_BAD:-}" ]]; then data="not the keyset"; else data=$(tail -n +2 "$in" | base64 -d); fi
    if [[ $out == - ]]; then printf '%s' "$data"; else printf '%s' "$data" >"$out"; fi ;;
  *) echo "fake systemd-creds: $cmd?" >&2; exit 1 ;;
esac
`

func runInstall(t *testing.T, extraEnv []string, args ...string) result {
	t.Helper()
	cmd := exec.Command("bash", append([]string{installScript}, args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return result{out.String(), errb.String(), err}
}

// --help lists every flag and nothing of the script's code.
func TestInstallHelp(t *testing.T) {
	r := runInstall(t, nil, "--help").ok(t)
	for _, flag := range []string{"--prefix DIR", "--bin-dir DIR", "--keyset FILE", "--encrypted", "--no-start", "--destdir DIR", "--help"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("--help does not list %s:\n%s", flag, r.stdout)
		}
	}
	for _, stray := range []string{"set -", "pipefail", "cd \"$("} {
		if strings.Contains(r.stdout, stray) {
			t.Errorf("--help prints script code %q:\n%s", stray, r.stdout)
		}
	}
	runInstall(t, nil, "--prefix").fails(t, "--prefix needs a value")
	runInstall(t, nil, "--bogus").fails(t, "unknown argument --bogus")
}

// Re-running with --encrypted over a plain install must never lose the only plaintext keyset: a
// copy that does not decrypt to the same bytes changes nothing, and a good one leaves a root-only
// backup whose path is printed.
func TestInstallEncryptedKeepsTheKeyset(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("install.sh runs as root only (CI runs as root)")
	}
	fakeBin := t.TempDir()
	if err := os.WriteFile(filepath.Join(fakeBin, "systemd-creds"), []byte(fakeSystemdCreds), 0o755); err != nil {
		t.Fatal(err)
	}
	pathEnv := "PATH=" + fakeBin + ":" + os.Getenv("PATH")
	dest := t.TempDir()
	base := []string{"--destdir", dest, "--bin-dir", binDir, "--no-start"}
	plain := filepath.Join(dest, "etc/credstore/credbroker.master-keyset")
	enc := filepath.Join(dest, "etc/credstore.encrypted/credbroker.master-keyset")

	r := runInstall(t, []string{pathEnv}, base...).ok(t)
	keyset, err := os.ReadFile(plain)
	if err != nil || !bytes.Contains(keyset, []byte("primaryKeyId")) {
		t.Fatalf("plain install made no keyset: %v\n%s\n%s", err, r.stdout, r.stderr)
	}
	for _, f := range []string{"etc/systemd/system/credbroker.service", "etc/systemd/system/credbroker.socket", "usr/local/bin/brokerd", "usr/local/bin/brokerctl"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("plain install: %v", err)
		}
	}

	// A credential that does not decrypt to the keyset: refused, the plain install untouched.
	r = runInstall(t, []string{pathEnv, "FAKE_CREDS_BAD=1"}, append(base, "--encrypted")...).fails(t, "did not decrypt to the same keyset")
	if got, err := os.ReadFile(plain); err != nil || !bytes.Equal(got, keyset) {
		t.Fatalf("a failed --encrypted changed the plain keyset: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dest, "etc/credstore.encrypted/*")); len(m) != 0 {
		t.Fatalf("a failed --encrypted left %v", m)
	}
	if _, err := os.Stat(filepath.Join(dest, "etc/systemd/system/credbroker.service.d/10-encrypted-keyset.conf")); err == nil {
		t.Fatal("a failed --encrypted wrote the drop-in")
	}

	// A good one: encrypted, verified, the plaintext moved to a root-only backup it names.
	r = runInstall(t, []string{pathEnv}, append(base, "--encrypted")...).ok(t)
	m := regexp.MustCompile(`the plaintext keyset was moved to (\S+) \(root-only, 0600\)`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("--encrypted does not say where the backup is:\n%s", r.stdout)
	}
	backup := m[1]
	if got, err := os.ReadFile(backup); err != nil || !bytes.Equal(got, keyset) {
		t.Fatalf("backup %s: %v", backup, err)
	}
	for path, mode := range map[string]os.FileMode{backup: 0o600, filepath.Dir(backup): 0o700 | os.ModeDir, enc: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, mode)
		}
	}
	if _, err := os.Stat(plain); !os.IsNotExist(err) {
		t.Fatalf("the plaintext keyset is still in the credstore: %v", err)
	}
	dec, err := exec.Command(filepath.Join(fakeBin, "systemd-creds"), "decrypt", "--name=master-keyset", enc, "-").Output()
	if err != nil || !bytes.Equal(dec, keyset) {
		t.Fatalf("the encrypted keyset does not decrypt to the keyset: %v", err)
	}
	dropin, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/credbroker.service.d/10-encrypted-keyset.conf"))
	if err != nil || !strings.Contains(string(dropin), "LoadCredentialEncrypted=master-keyset:/etc/credstore.encrypted/credbroker.master-keyset\n") {
		t.Fatalf("drop-in: %v\n%s", err, dropin)
	}

	// Once more: the existing encrypted keyset is kept as it is.
	r = runInstall(t, []string{pathEnv}, append(base, "--encrypted")...).ok(t)
	if !strings.Contains(r.stdout, "keeping the existing keyset") {
		t.Fatalf("rerun:\n%s", r.stdout)
	}
	if got, _ := exec.Command(filepath.Join(fakeBin, "systemd-creds"), "decrypt", "--name=master-keyset", enc, "-").Output(); !bytes.Equal(got, keyset) {
		t.Fatal("a rerun changed the encrypted keyset")
	}
}
