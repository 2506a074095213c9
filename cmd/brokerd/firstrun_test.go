package main

// The first run on a fresh machine: directories that do not exist yet, and the default socket.

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/credbroker/credbroker/broker/logtest"
)

// brokerd --db and brokerctl keyset new --out create a missing parent directory 0700, and leave an
// existing one's mode alone.
func TestMissingParentDirectories(t *testing.T) {
	e := newEnv(t)
	keyset := filepath.Join(e.dir, "etc", "credbroker", "master-keyset.json")
	e.ctl(t, "", "keyset", "new", "--out", keyset).ok(t)
	e.keyset = keyset
	e.db = filepath.Join(e.dir, "var", "lib", "credbroker", "broker.db")
	e.startDaemon(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"etc", "etc/credbroker", "var", "var/lib", "var/lib/credbroker"} {
		assertMode(t, filepath.Join(e.dir, d), 0o700)
	}

	// Existing 0755 directories stay 0755.
	open := filepath.Join(e.dir, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o755); err != nil { // whatever the umask made of it
		t.Fatal(err)
	}
	e.ctl(t, "", "keyset", "new", "--out", filepath.Join(open, "k.json")).ok(t)
	e.keyset = filepath.Join(open, "k.json")
	e.db = filepath.Join(open, "broker.db")
	e.startDaemon(t)
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	assertMode(t, open, 0o755)
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != want {
		t.Errorf("%s: mode %#o, want %#o", path, got, want)
	}
}

// Without --socket or $CREDBROKER_SOCKET, brokerd logs the default path it chose and why; with
// --socket it says nothing of the kind.
func TestDefaultSocketLogged(t *testing.T) {
	e := newEnv(t)
	const line = "no --socket or $CREDBROKER_SOCKET given: using the default socket path"

	type tc struct {
		name, envVar, socket, source string
	}
	cases := []tc{{"systemd runtime directory", "RUNTIME_DIRECTORY=" + filepath.Join(e.dir, "rt"), filepath.Join(e.dir, "rt", "broker.sock"), "$RUNTIME_DIRECTORY (systemd RuntimeDirectory=)"}}
	if os.Geteuid() != 0 { // as root the fallback is /run/credbroker, which a test must not take
		cases = append(cases, tc{"XDG_RUNTIME_DIR", "XDG_RUNTIME_DIR=" + filepath.Join(e.dir, "xdg"), filepath.Join(e.dir, "xdg", "credbroker", "broker.sock"), "$XDG_RUNTIME_DIR, as a non-root user"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--db", e.db, "--master-keyset", e.keyset, "--upstream-url", e.fake.URL)
			cmd.Env = append(envWithout(os.Environ(), "CREDBROKER_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"), c.envVar)
			e.stderr = &logtest.Buffer{}
			cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			e.daemon, e.socket = cmd, c.socket
			e.waitHealthy(t) // the line is logged before the socket is created
			if err := e.stop(t, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			log := e.stderr.String()
			if !strings.Contains(log, line) || !strings.Contains(log, "socket="+c.socket) || !strings.Contains(log, `chosen_by="`+c.source+`"`) {
				t.Fatalf("brokerd's log does not name the default socket %s chosen by %s:\n%s", c.socket, c.source, log)
			}
		})
	}

	t.Run("explicit --socket", func(t *testing.T) {
		e.socket = filepath.Join(e.dir, "run", "broker.sock")
		e.startDaemon(t)
		if err := e.stop(t, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(e.stderr.String(), line) {
			t.Fatalf("brokerd logged a default socket although --socket was given:\n%s", e.stderr.String())
		}
	})
}

// envWithout returns env minus the named variables.
func envWithout(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// The first-run slip, through the real binaries: a key stored under a name no tool spends.
// `credential put` warns, and `status` names both the stray credential and the missing one.
func TestStatusWarnsAboutCredentials(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	missing := regexp.MustCompile(`WARNING:\s+tool web_search: credential scavio_api_key is not stored`)
	if out := e.ctl(t, "", "status").ok(t).stdout; !missing.MatchString(out) {
		t.Fatalf("status on an empty broker does not say the credential is missing:\n%s", out)
	}
	r := e.ctl(t, itKey+"\n", "credential", "put", "scavio").ok(t)
	if !strings.Contains(r.stderr, "warning: no tool uses credential scavio") {
		t.Fatalf("put scavio: no warning on stderr: %q", r.stderr)
	}
	out := e.ctl(t, "", "status").ok(t).stdout
	if !strings.Contains(out, "credential scavio is used by no tool") || !missing.MatchString(out) {
		t.Fatalf("status after put scavio:\n%s", out)
	}
	r = e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	if r.stderr != "" {
		t.Fatalf("put scavio_api_key printed %q on stderr", r.stderr)
	}
	e.ctl(t, "", "credential", "delete", "scavio").ok(t)
	if out := e.ctl(t, "", "status").ok(t).stdout; strings.Contains(out, "WARNING") {
		t.Fatalf("status with the right credential still warns:\n%s", out)
	}
	e.assertNoLeak(t, itKey)
}
