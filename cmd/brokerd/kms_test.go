package main

// Process-level tests of the master key in a KMS (issue 19): brokerd started with
// --master-key-uri against a Vault Transit simulator restricted to the request shapes recorded
// against a real OpenBao 2.6.2 (broker/kms/transittest; its strict replay of the recorded
// exchanges is tested in broker/kms).

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/kms/transittest"
	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// kmsEnv is an env whose brokerd can reach a Transit simulator.
type kmsEnv struct {
	*env
	sim     *transittest.Sim
	uri     string
	vaultEn []string // VAULT_* for brokerd
}

func newKMSEnv(t *testing.T) *kmsEnv {
	t.Helper()
	e := newEnv(t)
	sim := transittest.NewSim(t, "credbroker")
	tokenFile := filepath.Join(e.dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(transittest.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(sim.URL, "http://")
	return &kmsEnv{env: e, sim: sim, uri: "hcvault://" + host + "/transit/keys/credbroker",
		// No client retries: a KMS that is down fails at once instead of after the Vault
		// client's backoff, which only slows the outage tests down.
		vaultEn: []string{"VAULT_ADDR=" + sim.URL, "VAULT_TOKEN_FILE=" + tokenFile, "VAULT_MAX_RETRIES=0", "VAULT_TOKEN=", "CREDENTIALS_DIRECTORY="}}
}

// brokerd runs brokerd with the master key given by args (--master-key-uri or --master-keyset).
func (k *kmsEnv) brokerd(args ...string) *exec.Cmd {
	all := append([]string{"--socket", k.socket, "--db", k.db, "--upstream-url", k.fake.URL}, args...)
	cmd := exec.Command(filepath.Join(binDir, "brokerd"), all...)
	cmd.Env = append(os.Environ(), k.vaultEn...)
	k.stderr = &logtest.Buffer{}
	cmd.Stderr, cmd.Stdout = k.stderr, k.stderr
	return cmd
}

func (k *kmsEnv) start(t *testing.T, args ...string) {
	t.Helper()
	cmd := k.brokerd(args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.daemon = cmd
	k.waitHealthy(t)
}

// refused runs brokerd expecting it to exit with an error, and returns its output.
func (k *kmsEnv) refused(t *testing.T, args ...string) string {
	t.Helper()
	cmd := k.brokerd(args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("brokerd %v started, want a refusal: %s", args, out.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("brokerd %v did not fail fast: %s", args, out.String())
	}
	return out.String()
}

type masterKeyStatus struct {
	Source         string   `json:"source"`
	LastKMSContact string   `json:"last_kms_contact"`
	KeyVersions    []string `json:"key_versions"`
}

func (k *kmsEnv) masterKey(t *testing.T) masterKeyStatus {
	t.Helper()
	r := k.ctl(t, "", "status", "--json").ok(t)
	var st struct {
		MasterKey masterKeyStatus `json:"master_key"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v: %s", err, r.stdout)
	}
	return st.MasterKey
}

func (k *kmsEnv) wantVersions(t *testing.T, want string) {
	t.Helper()
	if got := strings.Join(k.masterKey(t).KeyVersions, ","); got != want {
		t.Fatalf("wrapped under KMS key versions %q, want %q", got, want)
	}
}

// waitLog waits until brokerd has logged s (the event itself, not a guess at how long it takes).
func (k *kmsEnv) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(k.stderr.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("brokerd never logged %q:\n%s", s, k.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// brokerd with its KEK in Transit: it stores and serves a credential; after each rotation of the
// Transit key the database is re-wrapped under the new version by `keyset rewrap`, by SIGHUP and
// by a restart (trap 2: Transit ciphertexts carry no Tink key id, so the keyset-file logic alone
// would never re-wrap); with the KMS down after start it keeps serving, and at start it refuses
// naming the URI; started with a keyset file instead it names the flag to use.
func TestKMSTransitRewrapAndOutage(t *testing.T) {
	k := newKMSEnv(t)
	k.start(t, "--master-key-uri", k.uri)
	startCalls := k.sim.Calls()
	token, _ := k.setup(t)
	k.search(t, token, "under transit").ok(t)
	k.search(t, token, "under transit again").ok(t)
	if n := k.sim.Calls() - startCalls; n != 0 {
		t.Fatalf("a put, a mint and two searches made %d KMS calls; the KMS is for start and re-wrap only", n)
	}
	t.Logf("KMS calls for a fresh database's start: %d; for put+mint+2 searches: 0", startCalls)

	mk := k.masterKey(t)
	if mk.Source != k.uri || mk.LastKMSContact == "" {
		t.Fatalf("status master key: %+v, want source %s and a last contact", mk, k.uri)
	}
	k.wantVersions(t, "1")
	if r := k.ctl(t, "", "health", "--verbose").ok(t); !strings.Contains(r.stdout, "master key: "+k.uri) {
		t.Fatalf("health --verbose: %s", r.stdout)
	}

	// 1. Rotation in Transit, then `keyset rewrap`.
	k.sim.Rotate("credbroker")
	k.wantVersions(t, "1") // nothing notices by itself: no Tink key id in "vault:v1:..."
	if r := k.ctl(t, "", "keyset", "rewrap").ok(t); !strings.Contains(r.stdout, "key version 2 (was 1)") {
		t.Fatalf("keyset rewrap: %s", r.stdout)
	}
	k.wantVersions(t, "2")
	r := k.ctl(t, "", "audit", "--json").ok(t)
	if !strings.Contains(r.stdout, "RewrapMasterKey") {
		t.Fatalf("the re-wrap is not in the audit log: %s", r.stdout)
	}

	// 2. Rotation, then SIGHUP.
	k.sim.Rotate("credbroker")
	k.daemon.Process.Signal(syscall.SIGHUP)
	k.waitLog(t, "master key reloaded; the database's keysets are now wrapped under its current key")
	k.wantVersions(t, "3")

	// 3. Rotation, then a restart.
	// (This start names the KMS key through CREDBROKER_MASTER_KEY_URI instead of the flag.)
	k.sim.Rotate("credbroker")
	if err := k.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	k.vaultEn = append(k.vaultEn, "CREDBROKER_MASTER_KEY_URI="+k.uri)
	k.start(t)
	k.vaultEn = k.vaultEn[:len(k.vaultEn)-1]

	// Outage right after start, before any status call: serving and status go on (the start-up
	// re-wrap to version 4 shows in status without the KMS); a re-wrap and a reload are refused.
	calls := k.sim.Calls()
	k.sim.Close()
	k.wantVersions(t, "4")
	k.search(t, token, "kms down").ok(t)
	k.ctl(t, "", "keyset", "rewrap").fails(t, "KMS")
	k.daemon.Process.Signal(syscall.SIGHUP)
	k.waitLog(t, "master key reload rejected; still using the KMS client opened earlier")
	k.search(t, token, "kms still down").ok(t)
	if k.sim.Calls() != calls {
		t.Fatalf("the closed simulator was called")
	}
	if err := k.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	// Outage at start: a clear error naming the URI.
	out := k.refused(t, "--master-key-uri", k.uri)
	if !strings.Contains(out, k.uri) || !strings.Contains(out, "needed at start") {
		t.Fatalf("start with the KMS down: %s", out)
	}
	// The old flag on a database under the KMS: names what to start with.
	out = k.refused(t, "--master-keyset", k.keyset)
	if !strings.Contains(out, "start brokerd with --master-key-uri "+k.uri) {
		t.Fatalf("start with a keyset on a KMS database: %s", out)
	}
	// Both, or neither: refused.
	if out := k.refused(t, "--master-keyset", k.keyset, "--master-key-uri", k.uri); !strings.Contains(out, "exactly one of --master-keyset and --master-key-uri") {
		t.Fatalf("both flags: %s", out)
	}
	k.assertNoLeak(t, itKey, transittest.Token)
	if strings.Contains(k.stderr.String(), transittest.Token) {
		t.Fatal("brokerd logged the Vault token")
	}
}

// An AEAD that sends the AAD as `context` is refused at start (trap 1) by the self-test; this
// proves brokerd's own AEAD is not one: against a simulator that ignores `context`, brokerd starts,
// so it did not send it (the simulator fails the test on any request with `context` unless told to
// ignore it, and this one is told to, so the self-test is what decides).
func TestKMSStartsOnlyWithAssociatedData(t *testing.T) {
	k := newKMSEnv(t)
	k.sim.SetIgnoreContext(true)
	k.start(t, "--master-key-uri", k.uri)
	// brokerd logs "brokerd serving" after its own health check passes, so the line may come a
	// moment after ours did: wait for it (the bound only turns its absence into a failure).
	waitUntil(t, 10*time.Second, "brokerd logs its serving line", func() bool {
		return strings.Contains(k.stderr.String(), `msg="brokerd serving"`)
	})
	if !strings.Contains(k.stderr.String(), "master_key="+k.uri) {
		t.Fatalf("serving line does not name the KMS key: %s", k.stderr.String())
	}
}

// `keyset migrate` moves a live brokerd's database from a keyset file to Transit and on to another
// keyset file while a client searches in a loop: no call fails. Restarted with the first keyset,
// brokerd refuses and names the file it must start with; with that file it serves.
func TestKMSMigrateLive(t *testing.T) {
	k := newKMSEnv(t)
	k.start(t, "--master-keyset", k.keyset)
	token, _ := k.setup(t)

	c, err := client.New(k.socket, client.WithToken(token))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var (
		done          = make(chan struct{})
		wg            sync.WaitGroup
		calls, failed atomic.Int64
		firstErr      atomic.Value
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// A new query each time: the result cache must not answer instead of brokerd.
			_, err := c.Search(ctx, &credbrokerv1.SearchRequest{Tool: "web_search", Query: "migrate " + strings.Repeat("x", i%50) + string(rune('a'+i%26))})
			if err == nil && i%5 == 0 {
				// Status reads the key list, which a migrate re-wraps under it.
				_, err = c.Status(ctx)
			}
			cancel()
			calls.Add(1)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}
	}()
	// waitCalls waits until the loop has made n more calls: each migration happens with calls
	// before and after it.
	waitCalls := func(n int64) {
		target := calls.Load() + n
		deadline := time.Now().Add(20 * time.Second)
		for calls.Load() < target && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}

	waitCalls(20)
	r := k.ctl(t, "", "keyset", "migrate", "--to", k.uri).ok(t)
	if !strings.Contains(r.stdout, "restart brokerd with --master-key-uri "+k.uri) {
		t.Fatalf("migrate to the KMS: %s", r.stdout)
	}
	if mk := k.masterKey(t); mk.Source != k.uri || strings.Join(mk.KeyVersions, ",") != "1" {
		t.Fatalf("after migrating to the KMS: %+v", mk)
	}
	// Running it again is harmless (resumable: it is one transaction).
	k.ctl(t, "", "keyset", "migrate", "--to", k.uri).ok(t)
	waitCalls(20)

	second := filepath.Join(k.dir, "second.json")
	k.ctl(t, "", "keyset", "new", "--out", second).ok(t)
	r = k.ctl(t, "", "keyset", "migrate", "--to", second).ok(t)
	if !strings.Contains(r.stdout, "restart brokerd with --master-keyset "+second) {
		t.Fatalf("migrate to a file: %s", r.stdout)
	}
	if mk := k.masterKey(t); mk.Source != "file "+second || len(mk.KeyVersions) != 0 {
		t.Fatalf("after migrating to the file: %+v", mk)
	}
	waitCalls(20)
	close(done)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d searches failed during the migrations; first: %v", n, calls.Load(), firstErr.Load())
	}
	t.Logf("%d searches (and a status call every 5th), none failed, across two migrations", calls.Load())

	// A bad target is refused and changes nothing.
	k.ctl(t, "", "keyset", "migrate", "--to", "aws-kms://arn:aws:kms:eu-west-1:111122223333:bucket/x").fails(t, "not an AWS KMS key URI")
	k.ctl(t, "", "keyset", "migrate", "--to", filepath.Join(k.dir, "missing.json")).fails(t, "no such file")

	if err := k.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	out := k.refused(t, "--master-keyset", k.keyset)
	if !strings.Contains(out, "start brokerd with --master-keyset "+second) {
		t.Fatalf("restart with the first keyset: %s", out)
	}
	k.start(t, "--master-keyset", second)
	k.search(t, token, "after migrations").ok(t)
}
