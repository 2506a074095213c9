package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/kms/transittest"
	"github.com/credbroker/credbroker/broker/logtest"
)

// heldKMS is a Transit simulator whose requests wait, while held, until release: brokerd is then
// held in its start-up, in the KMS self-test, for as long as the test needs.
type heldKMS struct {
	uri     string
	env     []string
	arrived chan struct{}
	mu      sync.Mutex
	gate    chan struct{} // closed: requests go through
}

// release lets every request through, the held ones and those to come.
func (h *heldKMS) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.gate:
	default:
		close(h.gate)
	}
}

// hold makes the requests from now on wait again, until release.
func (h *heldKMS) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.gate:
		h.gate = make(chan struct{})
	default:
	}
}

func (h *heldKMS) currentGate() chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gate
}

func newHeldKMS(t *testing.T, dir string) *heldKMS {
	t.Helper()
	sim := transittest.NewSimHandler(t, "credbroker")
	h := &heldKMS{arrived: make(chan struct{}, 64), gate: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gate := h.currentGate()
		select {
		case <-gate:
		default:
			h.arrived <- struct{}{}
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(func() { h.release(); srv.Close() })
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(transittest.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.uri = "hcvault://" + strings.TrimPrefix(srv.URL, "http://") + "/transit/keys/credbroker"
	h.env = []string{"VAULT_ADDR=" + srv.URL, "VAULT_TOKEN_FILE=" + tokenFile, "VAULT_MAX_RETRIES=0", "VAULT_TOKEN="}
	return h
}

// waitLog waits until brokerd's output holds want; it fails the test if brokerd exits first.
func waitLog(t *testing.T, cmd *exec.Cmd, exited <-chan error, out *logtest.Buffer, want string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(15 * time.Second)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-exited:
			t.Fatalf("brokerd exited (%v) before logging %q:\n%s", err, want, out.String())
		case <-deadline:
			t.Fatalf("brokerd did not log %q:\n%s", want, out.String())
		case <-tick.C:
		}
	}
}

// A SIGHUP that arrives while brokerd starts (here: while it waits for its KMS) used to kill it,
// Go's default for the signal, half-way through its start-up. It is now noted, brokerd finishes
// starting, and reloads the master key once it serves.
func TestSIGHUPDuringStartup(t *testing.T) {
	e := newEnv(t)
	kms := newHeldKMS(t, e.dir)
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db,
		"--upstream-url", e.fake.URL, "--master-key-uri", kms.uri)
	cmd.Env = append(cleanEnv(), append(kms.env, "CREDENTIALS_DIRECTORY=")...)
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	e.stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	<-kms.arrived // brokerd is in its start-up, waiting for the KMS
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, cmd, exited, out, "SIGHUP while starting")
	kms.release()
	waitLog(t, cmd, exited, out, "brokerd serving")
	waitLog(t, cmd, exited, out, "master key reloaded")
	if !healthy(e.socket) {
		t.Fatalf("brokerd not healthy after a SIGHUP during start-up:\n%s", out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, out.String())
	}
}

// SIGTERM while brokerd starts (systemctl stop while it waits for its KMS) is a clean stop: the
// KMS call is abandoned, nothing was served, and brokerd exits 0, as after serving. It used to
// wait for the KMS client's own timeout (tink.AEAD calls take no context: 15 s per Vault attempt,
// 30 s per AWS or Cloud KMS call), past the unit's TimeoutStopSec=20s, then exit 1. Here the
// client's timeout is an hour, so only the SIGTERM can end the wait.
func TestSIGTERMDuringStartup(t *testing.T) {
	e := newEnv(t)
	kms := newHeldKMS(t, e.dir)
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db,
		"--upstream-url", e.fake.URL, "--master-key-uri", kms.uri)
	cmd.Env = append(cleanEnv(), append(kms.env, "CREDENTIALS_DIRECTORY=", "VAULT_CLIENT_TIMEOUT=1h")...)
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	e.stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	<-kms.arrived
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("SIGTERM during start-up: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second): // the unit's TimeoutStopSec=
		t.Fatalf("brokerd still running 20s after SIGTERM, waiting for its KMS:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stopped while starting") {
		t.Fatalf("brokerd did not say it stopped while starting:\n%s", out.String())
	}
}

// SIGTERM while a SIGHUP reload waits for a KMS that does not answer: the stop does not wait for
// the reload (its KMS calls hold no database lock), brokerd drains and exits 0 within the unit's
// TimeoutStopSec=.
func TestSIGTERMDuringReloadWithHungKMS(t *testing.T) {
	e := newEnv(t)
	kms := newHeldKMS(t, e.dir)
	kms.release() // start-up goes through
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db,
		"--upstream-url", e.fake.URL, "--master-key-uri", kms.uri, "--shutdown-timeout", "1s")
	cmd.Env = append(cleanEnv(), append(kms.env, "CREDENTIALS_DIRECTORY=", "VAULT_CLIENT_TIMEOUT=1h")...)
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	e.stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitLog(t, cmd, exited, out, "brokerd serving")

	kms.hold()
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	<-kms.arrived // the reload is waiting for the KMS
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("SIGTERM during a reload: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second): // the unit's TimeoutStopSec=
		t.Fatalf("brokerd still running 20s after SIGTERM, waiting for its KMS:\n%s", out.String())
	}
}

// A reload waiting for a KMS that does not answer does not starve the watchdog: brokerd serves
// all along, so WATCHDOG=1 keeps coming. The reload used to run on the watchdog's own loop, so a
// KMS slower than WatchdogSec= (its calls take no context: up to 45 s per Vault call with retries,
// 30 s per AWS or Cloud KMS call) got a serving brokerd killed by systemd for a missed ping.
func TestWatchdogPingsDuringAHungReload(t *testing.T) {
	e := newEnv(t)
	kms := newHeldKMS(t, e.dir)
	kms.release()
	n := newNotifySocket(t, e.dir)
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), "--socket", e.socket, "--db", e.db,
		"--upstream-url", e.fake.URL, "--master-key-uri", kms.uri, "--shutdown-timeout", "1s")
	cmd.Env = append(cleanEnv(), append(kms.env, "CREDENTIALS_DIRECTORY=", "VAULT_CLIENT_TIMEOUT=1h",
		"NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=400000")...)
	out := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	e.stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	n.waitFor(t, "READY=1", 15*time.Second, nil)

	kms.hold()
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "RELOADING=1", 10*time.Second, nil)
	<-kms.arrived // the reload waits for the KMS, and will until released
	for i := 0; i < 3; i++ {
		n.waitFor(t, "WATCHDOG=1", 5*time.Second, func(msg []string) {
			if has(msg, "READY=1") {
				t.Fatalf("the reload ended while its KMS was held: %q", msg)
			}
		})
	}
	kms.release()
	n.waitFor(t, "READY=1", 10*time.Second, nil) // the reload's end
	waitLog(t, cmd, exited, out, "master key reloaded")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, out.String())
	}
}
