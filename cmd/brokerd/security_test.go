package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fernet/fernet-go"
	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

const nobody = 65534

// asUID runs brokerctl as another local user, so the daemon sees that uid through SO_PEERCRED.
func (e *env) asUID(t *testing.T, uid uint32, token string, args ...string) result {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "brokerctl"), append([]string{"--socket", e.socket}, args...)...)
	cmd.Env = []string{"CREDBROKER_TOKEN=" + token, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	e.outputs.Write(out.Bytes())
	e.outputs.Write(errb.Bytes())
	return result{out.String(), errb.String(), err}
}

// Another local user who can reach the socket cannot use the admin API, cannot use a token bound
// to someone else, and can use a token bound to itself.
func TestOtherUIDIsConfined(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534 (CI runs as root)")
	}
	e := newEnv(t)
	// Let uid 65534 reach the binaries and the socket directory's parent.
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.startDaemon(t, "--socket-group", "65534")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	rootTok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search", "--bind-uid", "0").ok(t).stdout)
	nobodyTok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search", "--bind-uid", "65534").ok(t).stdout)

	e.asUID(t, nobody, "", "status").fails(t, "permission denied: uid 65534")
	e.asUID(t, nobody, "", "token", "mint", "--tools", "web_search").fails(t, "--admin-uid 65534")
	e.asUID(t, nobody, rootTok, "search", "q").fails(t, "bound to another uid")
	r := e.asUID(t, nobody, nobodyTok, "search", "q").ok(t)
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "Results: 5") {
		t.Fatalf("bound token from its uid: %s", r.stdout)
	}
	e.search(t, nobodyTok, "q").fails(t, "bound to another uid") // root may not use nobody's token

	// The misuse is in the audit log with the peer's uid.
	out := e.ctl(t, "", "audit", "--json").ok(t).stdout
	var misuse, denied bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit --json line %q: %v", line, err)
		}
		if rec["event"] == "bound-token-misuse" && rec["uid"] == float64(nobody) {
			misuse = true
			// brokerd runs as root here, so with a pidfd it may read the caller's executable.
			exe, _ := rec["exe"].(string)
			if peercred.PidfdSupported() && (rec["pidfd"] != true || !strings.HasSuffix(exe, "/brokerctl")) {
				t.Errorf("misuse record does not name brokerctl: pidfd=%v exe=%v", rec["pidfd"], rec["exe"])
			}
		}
		if rec["code"] == "PermissionDenied" && rec["uid"] == float64(nobody) && strings.HasSuffix(rec["method"].(string), "/Status") {
			denied = true
		}
	}
	if !misuse || !denied {
		t.Fatalf("audit lacks the misuse (%v) or the denied admin call (%v):\n%s", misuse, denied, out)
	}
	st, err := os.Stat(filepath.Dir(e.socket))
	if err != nil || st.Mode().Perm() != 0o750 {
		t.Fatalf("socket dir mode: %v %v", st.Mode(), err)
	}
}

// A unique key goes through every command and RPC; it must appear in no output, log line, audit
// record, error, or in the database file.
func TestCanaryKeyNeverLeaks(t *testing.T) {
	e := newEnv(t)
	const canary = "sk_live_CANARY_3e9b1f7d2c5a4086b1e2"
	const canary2 = "sk_live_CANARY2_77aa01bd934c5e62"
	e.fake.AddKey(canary)
	e.startDaemon(t, "--log-level", "debug")
	e.ctl(t, canary+"\n", "credential", "put", "scavio_api_key").ok(t)
	tok := strings.TrimSpace(e.ctl(t, "", "token", "mint", "--tools", "web_search,google_search", "--max-uses", "50", "--rate", "100/m").ok(t).stdout)
	id := strings.Split(tok, "_")[1]
	e.search(t, tok, "canary query").ok(t)
	e.search(t, tok, "--json", "--tool", "google_search", "canary query").ok(t)
	for _, st := range []int{400, 401, 403, 500, 429} { // an upstream that echoes the key back (429 last: it pauses the key)
		e.fake.SetFault(scaviotest.Fault{Status: st, EchoKey: true})
		e.search(t, tok, "q").fails(t, "")
	}
	e.fake.SetFault(scaviotest.Fault{})
	e.fake.AddKey(canary2)
	e.ctl(t, canary2+"\n", "rotate", "scavio_api_key").ok(t)
	e.search(t, tok, "after").ok(t)
	for _, args := range [][]string{
		{"credential", "list"}, {"credential", "list", "--json"}, {"status"}, {"status", "--json"},
		{"token", "list", "--all"}, {"token", "list", "--json"}, {"token", "inspect", id}, {"token", "inspect", "--json", id},
		{"audit"}, {"audit", "--json"}, {"audit", "verify"},
	} {
		e.ctl(t, "", args...).ok(t)
	}
	e.ctl(t, "", "token", "revoke", id).ok(t)
	e.ctl(t, "", "credential", "delete", "scavio_api_key").ok(t)
	e.search(t, tok, "q").fails(t, "revoked")
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{canary, canary2} {
		if strings.Contains(e.outputs.String(), s) {
			t.Errorf("brokerctl printed a key")
		}
	}
	e.assertNoLeak(t, canary, canary2, tok)
}

// Editing the audit log offline is caught by `brokerctl audit verify`, which names the record.
func TestAuditVerifyCatchesOfflineEdit(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t)
	token, _ := e.setup(t)
	for range 3 {
		e.search(t, token, "q").ok(t)
	}
	if r := e.ctl(t, "", "audit", "verify").ok(t); !strings.Contains(r.stdout, "audit log OK") {
		t.Fatalf("verify: %s", r.stdout)
	}
	if err := e.stop(t, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(e.db, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Records 1-3 are put ("started", then its outcome) and mint (its outcome, committed with the
	// token); 4-6 are the searches: make the second look like it was refused.
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		k := []byte{0, 0, 0, 0, 0, 0, 0, 5}
		v := bytes.Clone(b.Get(k))
		return b.Put(k, bytes.Replace(v, []byte(`"code":"OK"`), []byte(`"code":"PermissionDenied"`), 1))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.startDaemon(t)
	e.ctl(t, "", "audit", "verify").fails(t, "record 5 was edited")
}

// brokerd refuses to start on a database changed offline by someone without the master keyset:
// a token or rotation policy edited in the file, or the audit chain head put back to its value
// in an earlier copy of the file (with the newest audit records removed), which drops the
// newest records while the chain still verifies. It exits non-zero and says to restore from a
// backup; nothing is served from the file.
func TestStartupRefusesTamperedDatabase(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		tamper     func(t *testing.T, e *env, snapshot string)
	}{
		{"token scope widened", `"tokens"`, func(t *testing.T, e *env, _ string) {
			editBolt(t, e.db, func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("tokens"))
				return b.ForEach(func(k, v []byte) error {
					return b.Put(bytes.Clone(k), bytes.Replace(bytes.Clone(v), []byte(`"tools":["web_search"]`), []byte(`"tools":["web_search","google_search"]`), 1))
				})
			})
		}},
		{"rotate command replaced", `"policy"`, func(t *testing.T, e *env, _ string) {
			editBolt(t, e.db, func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("credentials")).Bucket([]byte("scavio_api_key"))
				return b.Put([]byte("policy"), bytes.Replace(bytes.Clone(b.Get([]byte("policy"))), []byte("/bin/true"), []byte("/bin/sh"), 1))
			})
		}},
		{"audit head put back", "older than the state", func(t *testing.T, e *env, snapshot string) {
			var oldHead []byte
			sdb, err := bolt.Open(snapshot, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			sdb.View(func(tx *bolt.Tx) error {
				oldHead = bytes.Clone(tx.Bucket([]byte("meta")).Get([]byte("audit_head")))
				return nil
			})
			var oldLast []byte
			sdb.View(func(tx *bolt.Tx) error {
				oldLast, _ = tx.Bucket([]byte("audit")).Cursor().Last()
				oldLast = bytes.Clone(oldLast)
				return nil
			})
			sdb.Close()
			editBolt(t, e.db, func(tx *bolt.Tx) error {
				a := tx.Bucket([]byte("audit"))
				var newer [][]byte
				c := a.Cursor()
				for k, _ := c.Seek(oldLast); k != nil; k, _ = c.Next() {
					if !bytes.Equal(k, oldLast) {
						newer = append(newer, bytes.Clone(k))
					}
				}
				for _, k := range newer {
					if err := a.Delete(k); err != nil {
						return err
					}
				}
				return tx.Bucket([]byte("meta")).Put([]byte("audit_head"), oldHead)
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.startDaemon(t)
			e.setup(t)
			e.ctl(t, "", "credential", "policy", "scavio_api_key", "--max-age", "720h", "--rotate-command", "/bin/true").ok(t)
			if err := e.stop(t, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			snapshot := filepath.Join(e.dir, "backup.db")
			raw, err := os.ReadFile(e.db)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(snapshot, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			e.startDaemon(t) // state written after the snapshot: a token minted later
			e.ctl(t, "", "token", "mint", "--tools", "web_search", "--ttl", "30m", "--label", "later").ok(t)
			if err := e.stop(t, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}

			tc.tamper(t, e, snapshot)
			cmd := e.daemonCmd()
			err = cmd.Run()
			out := e.stderr.String()
			t.Logf("brokerd: %s", lastLines(out, 2))
			if err == nil {
				t.Fatalf("brokerd started on a tampered database: %s", out)
			}
			for _, want := range []string{"integrity check", "restore the database from a backup", tc.want} {
				if !strings.Contains(out, want) {
					t.Fatalf("brokerd's refusal does not say %q: %s", want, out)
				}
			}
		})
	}
}

func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// --admin-gid counts supplementary groups too (SO_PEERGROUPS, as the caller had them when it
// connected): a uid whose primary group is not the admin group but who is in it may call the
// admin API; the same uid without that group may not.
func TestAdminGIDMatchesSupplementaryGroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534 with chosen groups (CI runs as root)")
	}
	const adminGID = 4242
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.startDaemon(t, "--socket-group", "65534", "--admin-gid", "4242")
	r := e.asUIDGroups(t, nobody, []uint32{adminGID}, "status")
	if r.err != nil {
		t.Fatalf("uid 65534 in supplementary group %d refused: %s", adminGID, r.stderr)
	}
	if r := e.asUIDGroups(t, nobody, []uint32{7}, "status"); r.err == nil || !strings.Contains(r.stderr, "permission denied: uid 65534") {
		t.Fatalf("uid 65534 without group %d: err %v, stderr %q", adminGID, r.err, r.stderr)
	}
}

// Another local user (65534) runs a brokerd of its own at the path brokerctl dials: brokerctl,
// run as root, sees the server's uid and refuses to send the secret; the squatter's database
// never holds it and its audit log has no call from root until root says to trust that uid with
// CREDBROKER_SERVER_UID.
func TestBrokerctlRefusesSquattedSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a brokerd as uid 65534 (CI runs as root)")
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The squatter's own directory, keyset, database and socket.
	sq := filepath.Join(e.dir, "squat")
	if err := os.Mkdir(sq, 0o700); err != nil {
		t.Fatal(err)
	}
	keyset, err := os.ReadFile(e.keyset)
	if err != nil {
		t.Fatal(err)
	}
	e.keyset, e.db, e.socket = filepath.Join(sq, "master.json"), filepath.Join(sq, "broker.db"), filepath.Join(sq, "broker.sock")
	if err := os.WriteFile(e.keyset, keyset, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{sq, e.keyset} {
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sq, 0o755); err != nil { // root's client must reach the socket
		t.Fatal(err)
	}
	cmd := e.daemonCmd("--socket-mode", "0666")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)

	const secret = "sk_live_SQUATTED_0f9e8d7c6b5a"
	// The tutorial's encrypted file, for import.
	var fkey fernet.Key
	fkey.Generate()
	ftok, err := fernet.EncryptAndSign([]byte(secret), &fkey)
	if err != nil {
		t.Fatal(err)
	}
	fpath := filepath.Join(e.dir, "mcp_credentials.enc")
	fb, _ := json.Marshal(map[string]string{"scavio_api_key": string(ftok)})
	if err := os.WriteFile(fpath, fb, 0o600); err != nil {
		t.Fatal(err)
	}
	want := "the socket " + e.socket + " is served by uid 65534"
	for _, args := range [][]string{{"credential", "put", "scavio_api_key"}, {"credential", "rotate", "scavio_api_key"}, {"status"}, {"import", "--fernet", fpath}} {
		r := e.ctlEnv(t, []string{"MCP_ENCRYPTION_KEY=" + fkey.Encode()}, secret+"\n", args...).fails(t, want)
		if !strings.Contains(r.stderr, "refusing to send a token or secret") || !strings.Contains(r.stderr, "CREDBROKER_SERVER_UID=65534") {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
	trust := []string{"CREDBROKER_SERVER_UID=65534"}
	if out := e.ctlEnv(t, trust, "", "credential", "list").ok(t).stdout; strings.Contains(out, "scavio_api_key") {
		t.Fatalf("the squatter holds the credential:\n%s", out)
	}
	// Nothing but the list call just made reached the squatter from root.
	audit := e.ctlEnv(t, trust, "", "audit", "--json").ok(t).stdout
	if strings.Contains(audit, "PutCredential") || strings.Contains(audit, "RotateCredential") || strings.Contains(audit, "/Status") || strings.Contains(audit, "Import") {
		t.Fatalf("refused calls reached the squatter:\n%s", audit)
	}
	raw, err := os.ReadFile(e.db)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(secret)) || strings.Contains(e.stderr.String(), secret) {
		t.Fatal("the secret reached the squatter")
	}
	// Trusted on purpose, the same command goes through: the refusal was the check, nothing else.
	e.ctlEnv(t, trust, secret+"\n", "credential", "put", "scavio_api_key").ok(t)
}
