package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fernet/fernet-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/store"
)

// rotFake adds the rotation calls to fakeAPI.
type rotFake struct {
	*fakeAPI
	verify     bool
	rollbackTo uint64
	policy     *credbrokerv1.RotationPolicy
	policySet  bool
	imported   map[string]string
	sources    []string
	history    *credbrokerv1.CredentialHistoryResponse
	status     *credbrokerv1.StatusResponse
}

func newRotFake() *rotFake { return &rotFake{fakeAPI: &fakeAPI{}, imported: map[string]string{}} }

func (f *rotFake) RotateCredentialVerified(_ context.Context, name string, value []byte, verify bool) (*credbrokerv1.Credential, error) {
	f.putName, f.putVal, f.verify = name, string(value), verify
	return &credbrokerv1.Credential{Name: name, Version: 5}, f.err
}

func (f *rotFake) CredentialHistory(context.Context, string) (*credbrokerv1.CredentialHistoryResponse, error) {
	return f.history, f.err
}

func (f *rotFake) RollbackCredential(_ context.Context, name string, to uint64) (*credbrokerv1.RollbackCredentialResponse, error) {
	f.rollbackTo = to
	return &credbrokerv1.RollbackCredentialResponse{Credential: &credbrokerv1.Credential{Name: name, Version: 6}, FromVersion: 2}, f.err
}

func (f *rotFake) SetRotationPolicy(_ context.Context, name string, p *credbrokerv1.RotationPolicy) (*credbrokerv1.Credential, error) {
	f.policy, f.policySet = p, true
	return &credbrokerv1.Credential{Name: name, Policy: p}, f.err
}

func (f *rotFake) ImportCredential(_ context.Context, name string, value []byte, source string) (*credbrokerv1.Credential, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.imported[name] = string(value)
	f.sources = append(f.sources, source)
	return &credbrokerv1.Credential{Name: name, Version: 1}, nil
}

func (f *rotFake) ImportCredentials(_ context.Context, entries []client.ImportEntry, source string) ([]*credbrokerv1.Credential, error) {
	if f.err != nil {
		return nil, f.err
	}
	var out []*credbrokerv1.Credential
	for _, e := range entries {
		f.imported[e.Name] = string(e.Value)
		out = append(out, &credbrokerv1.Credential{Name: e.Name, Version: 1})
	}
	f.sources = append(f.sources, source)
	return out, nil
}

func (f *rotFake) Rekey(context.Context) (*credbrokerv1.RekeyResponse, error) {
	return &credbrokerv1.RekeyResponse{NewPrimaryKeyId: 42, Reencrypted: 3, Total: 3, RemovedKeyIds: []uint32{7}}, f.err
}

func (f *rotFake) Status(ctx context.Context) (*credbrokerv1.StatusResponse, error) {
	if f.status != nil {
		return f.status, f.err
	}
	return f.fakeAPI.Status(ctx)
}

func runRot(t *testing.T, f *rotFake, stdin string, env map[string]string, args ...string) run {
	t.Helper()
	var stdout, stderr strings.Builder
	a := newApp(strings.NewReader(stdin), &stdout, &stderr)
	a.getenv = func(k string) string { return env[k] }
	a.dial = func(string, string) (brokerAPI, error) { return f, nil }
	root := newRootCmd(a)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return run{stdout.String(), stderr.String(), err}
}

func TestParseAndFormatAge(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"30d", 30 * 24 * time.Hour, ""},
		{"1d12h", 36 * time.Hour, ""},
		{"12h", 12 * time.Hour, ""},
		{"90m", 90 * time.Minute, ""},
		{"0d", 0, "greater than zero"},
		{"-1h", 0, "not a duration"},
		{"xd", 0, "not a duration"},
		{"30 days", 0, "not a duration"},
		{"", 0, "not a duration"},
	} {
		got, err := parseAge(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseAge(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseAge(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for d, want := range map[time.Duration]string{
		30 * 24 * time.Hour: "30d", 36 * time.Hour: "1d12h", 5*time.Hour + 30*time.Minute: "5h30m",
		2 * time.Hour: "2h", 3 * time.Minute: "3m", 45 * time.Second: "45s", -2 * time.Hour: "2h",
	} {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestRotateVerify(t *testing.T) {
	f := newRotFake()
	r := runRot(t, f, "sk_new\n", nil, "rotate", "scavio", "--verify")
	if r.err != nil || !f.verify || f.putVal != "sk_new" || !strings.Contains(r.stdout, "rotated scavio to version 5 (verified upstream)") {
		t.Fatalf("--verify: %v %+v %q", r.err, f, r.stdout)
	}
	f = newRotFake()
	r = runRot(t, f, "sk_new\n", nil, "credential", "rotate", "scavio")
	if r.err != nil || f.verify || !strings.Contains(r.stdout, "rotated scavio to version 4\n") {
		t.Fatalf("without --verify: %v %+v %q", r.err, f, r.stdout)
	}
}

func TestCredentialHistoryCmd(t *testing.T) {
	uid := uint32(1000)
	ts := timestamppb.New(time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC))
	f := newRotFake()
	f.history = &credbrokerv1.CredentialHistoryResponse{Versions: []*credbrokerv1.CredentialVersion{
		{Version: 1, State: "previous", How: "import", CreatedAt: ts, KeyId: 11},
		{Version: 2, State: "previous", How: "scheduled", Verified: true, CreatedAt: ts, CreatedByUid: &uid, KeyId: 11},
		{Version: 3, State: "current", How: "rollback", FromVersion: 1, CreatedAt: ts, CreatedByUid: proto.Uint32(0), KeyId: 12},
	}}
	r := runRot(t, f, "", nil, "credential", "history", "scavio")
	if r.err != nil {
		t.Fatal(r.err)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{
		"VERSION  STATE     HOW             VERIFIED  CREATED               BY UID  DATA KEY",
		"1        previous  import          no        2026-05-06T07:08:09Z  -       11",
		"2        previous  scheduled       yes       2026-05-06T07:08:09Z  1000    11",
		"3        current   rollback of v1  no        2026-05-06T07:08:09Z  0       12",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("history:\n%s", r.stdout)
	}
	f.history.Events = []*credbrokerv1.CredentialEvent{
		{At: ts, Event: "rotate-verify-failed", Version: 4, ByUid: &uid, Detail: "upstream rejected the new key; it was not promoted"},
		{At: ts, Event: "rekey", Version: 3, Detail: "every version re-encrypted under data key 12"},
	}
	r = runRot(t, f, "", nil, "credential", "history", "scavio")
	for _, want := range []string{"TIME                  EVENT", "rotate-verify-failed  4        1000    upstream rejected", "rekey                 3        -       every version"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("history events lack %q:\n%s", want, r.stdout)
		}
	}
	r = runRot(t, f, "", nil, "credential", "history", "scavio", "--json")
	var js historyOutJSON
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js.Versions) != 3 || js.Versions[0].CreatedByUID != nil ||
		*js.Versions[2].CreatedByUID != 0 || js.Versions[2].FromVersion != 1 || len(js.Events) != 2 || *js.Events[0].ByUID != 1000 {
		t.Fatalf("history --json: %v %s", err, r.stdout)
	}
}

func TestRollbackCmd(t *testing.T) {
	f := newRotFake()
	r := runRot(t, f, "", nil, "credential", "rollback", "scavio", "--to", "2")
	if r.err != nil || f.rollbackTo != 2 || r.stdout != "rolled back scavio: version 6 now serves the value of version 2\n" {
		t.Fatalf("%v %d %q", r.err, f.rollbackTo, r.stdout)
	}
	r = runRot(t, f, "", nil, "credential", "rollback", "scavio")
	if r.err != nil || f.rollbackTo != 0 {
		t.Fatalf("default: %v %d", r.err, f.rollbackTo)
	}
}

func TestPolicyCmd(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    *credbrokerv1.RotationPolicy
		wantOut string
		wantErr string
	}{
		{name: "max age", args: []string{"--max-age", "30d"}, want: &credbrokerv1.RotationPolicy{MaxAge: durationpb.New(720 * time.Hour)}, wantOut: "scavio: max age 30d"},
		{name: "command with arguments", args: []string{"--max-age", "7d", "--verify", "--rotate-command", "/usr/local/bin/newkey", "--", "--project", "prod"},
			want:    &credbrokerv1.RotationPolicy{MaxAge: durationpb.New(168 * time.Hour), Verify: true, RotateCommand: []string{"/usr/local/bin/newkey", "--project", "prod"}},
			wantOut: "rotated by /usr/local/bin/newkey (2 arguments); verified before promotion"},
		{name: "clear", args: []string{"--clear"}, want: nil, wantOut: "scavio: no rotation policy"},
		{name: "nothing", args: nil, wantErr: "nothing to set"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "takes only NAME"},
		{name: "arguments without command", args: []string{"--max-age", "1d", "--", "a"}, wantErr: "need --rotate-command"},
		{name: "bad max age", args: []string{"--max-age", "a month"}, wantErr: "--max-age"},
		{name: "clear and set", args: []string{"--clear", "--verify"}, wantErr: "cannot be combined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRotFake()
			r := runRot(t, f, "", nil, append([]string{"credential", "policy", "scavio"}, tc.args...)...)
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) || f.policySet {
					t.Fatalf("err %v (sent: %v), want %q", r.err, f.policySet, tc.wantErr)
				}
				return
			}
			if r.err != nil || !f.policySet || !proto.Equal(f.policy, tc.want) || !strings.Contains(r.stdout, tc.wantOut) {
				t.Fatalf("err %v sent %v out %q", r.err, f.policy, r.stdout)
			}
		})
	}
}

func TestCredentialListDue(t *testing.T) {
	now := time.Now()
	f := newRotFake()
	f.creds = []*credbrokerv1.Credential{
		{Name: "fresh", Version: 1, RotatedAt: timestamppb.New(now.Add(-time.Hour)), NextDue: timestamppb.New(now.Add(29 * 24 * time.Hour)),
			Policy: &credbrokerv1.RotationPolicy{MaxAge: durationpb.New(30 * 24 * time.Hour)}},
		{Name: "old", Version: 3, RotatedAt: timestamppb.New(now.Add(-32 * 24 * time.Hour)), NextDue: timestamppb.New(now.Add(-2 * 24 * time.Hour)), Overdue: true},
		{Name: "nopolicy", Version: 1, RotatedAt: timestamppb.New(now.Add(-90 * time.Second))},
	}
	r := runRot(t, f, "", nil, "credential", "list")
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, want := range []string{"AGE", "DUE", "in 28d23h", "OVERDUE by 2d", "32d", "1m"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("list does not show %q:\n%s", want, r.stdout)
		}
	}
	r = runRot(t, f, "", nil, "credential", "list", "--json")
	var js []credentialListJSON
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js) != 3 {
		t.Fatalf("%v %s", err, r.stdout)
	}
	if js[0].MaxAge != "30d" || js[0].Overdue || !js[1].Overdue || js[1].AgeSeconds < 32*24*3600 || js[2].NextDue != "" {
		t.Fatalf("list --json: %+v", js)
	}
}

func TestStatusShowsRotation(t *testing.T) {
	f := newRotFake()
	f.status = &credbrokerv1.StatusResponse{
		Version: "v", Uptime: durationpb.New(time.Minute), MasterKeyIds: []uint32{99},
		DataPrimaryKeyId: 12, DataKeys: []*credbrokerv1.DataKeyUsage{{KeyId: 12, Primary: true, Versions: 3}},
		Rotation: []*credbrokerv1.RotationStatus{{Credential: "scavio", Version: 3, RotatedAt: timestamppb.New(time.Now().Add(-time.Hour)), AutoRotate: true}},
		Warnings: []string{"credential scavio: current key rejected, serving previous (v3 rejected ...)"},
	}
	r := runRot(t, f, "", nil, "status")
	for _, want := range []string{"master key in use:  99", "data keys:", "12 (3 versions, primary)", "rotation scavio:", "rotated automatically",
		"WARNING:", "current key rejected, serving previous"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status does not show %q:\n%s", want, r.stdout)
		}
	}
	r = runRot(t, f, "", nil, "status", "--json")
	var js statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || len(js.Warnings) != 1 || js.DataPrimaryKeyID != 12 || len(js.Rotation) != 1 {
		t.Fatalf("status --json: %v %s", err, r.stdout)
	}
}

func TestRekeyCmd(t *testing.T) {
	r := runRot(t, newRotFake(), "", nil, "rekey")
	if r.err != nil || r.stdout != "rotated the data keyset: primary key 42; re-encrypted 3 of 3 versions; removed old key ids 7\n" {
		t.Fatalf("%v %q", r.err, r.stdout)
	}
}

var tutorialValues = map[string]string{"scavio_api_key": "sk_live_FROM_TUTORIAL_1", "github_token": "ghp_FROM_TUTORIAL_2"}

func writeFernetFile(t *testing.T, dir string, key *fernet.Key, vals map[string]string) string {
	t.Helper()
	m := map[string]string{}
	for n, v := range vals {
		tok, err := fernet.EncryptAndSign([]byte(v), key)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = string(tok)
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	p := filepath.Join(dir, "mcp_credentials.enc")
	os.WriteFile(p, b, 0o600)
	return p
}

func writeGCMFile(t *testing.T, dir string, key []byte, vals map[string]string) string {
	t.Helper()
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCMWithNonceSize(block, 16)
	m := map[string]string{}
	for n, v := range vals {
		iv := make([]byte, 16)
		rand.Read(iv)
		sealed := gcm.Seal(nil, iv, []byte(v), nil)
		m[n] = hex.EncodeToString(iv) + ":" + hex.EncodeToString(sealed[len(sealed)-16:]) + ":" + hex.EncodeToString(sealed[:len(sealed)-16])
	}
	b, _ := json.Marshal(m)
	p := filepath.Join(dir, "gcm.enc")
	os.WriteFile(p, b, 0o600)
	return p
}

func TestImportCmd(t *testing.T) {
	dir := t.TempDir()
	var fkey, other fernet.Key
	fkey.Generate()
	other.Generate()
	fpath := writeFernetFile(t, dir, &fkey, tutorialValues)
	gkey := make([]byte, 32)
	rand.Read(gkey)
	gpath := writeGCMFile(t, dir, gkey, tutorialValues)
	keyFile := filepath.Join(dir, "key.hex")
	os.WriteFile(keyFile, []byte(hex.EncodeToString(gkey)+"\n"), 0o600)
	badName := writeFernetFile(t, t.TempDir(), &fkey, map[string]string{"Bad Name": "v"})

	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		existing   []string
		wantErr    string
		wantSource string
		wantOut    string
	}{
		{name: "fernet from env", args: []string{"--fernet", fpath}, env: map[string]string{"MCP_ENCRYPTION_KEY": fkey.Encode()}, wantSource: "fernet",
			wantOut: "imported 2 credentials from " + fpath + ": github_token (v1), scavio_api_key (v1)"},
		{name: "aes-gcm from key file", args: []string{"--aes-gcm-hex", gpath, "--key-file", keyFile}, wantSource: "aes-gcm-hex", wantOut: "shred -u " + gpath},
		{name: "dry run", args: []string{"--fernet", fpath, "--dry-run"}, env: map[string]string{"MCP_ENCRYPTION_KEY": fkey.Encode()},
			wantOut: "would import 2 credentials: github_token, scavio_api_key"},
		{name: "no key", args: []string{"--fernet", fpath}, wantErr: "no key: set MCP_ENCRYPTION_KEY"},
		{name: "wrong key", args: []string{"--fernet", fpath}, env: map[string]string{"MCP_ENCRYPTION_KEY": other.Encode()}, wantErr: "does not decrypt with this key (wrong key, or not a Fernet token) (nothing was imported)"},
		{name: "both formats", args: []string{"--fernet", fpath, "--aes-gcm-hex", gpath}, wantErr: "not both"},
		{name: "no format", args: nil, wantErr: "--fernet FILE"},
		{name: "missing file", args: []string{"--fernet", filepath.Join(dir, "nope")}, env: map[string]string{"MCP_ENCRYPTION_KEY": fkey.Encode()}, wantErr: "no such file"},
		{name: "name taken", args: []string{"--fernet", fpath}, env: map[string]string{"MCP_ENCRYPTION_KEY": fkey.Encode()}, existing: []string{"scavio_api_key"},
			wantErr: `credential "scavio_api_key" already exists in brokerd; nothing was imported`},
		{name: "bad name", args: []string{"--fernet", badName}, env: map[string]string{"MCP_ENCRYPTION_KEY": fkey.Encode()}, wantErr: `entry "Bad Name": credential name must match`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRotFake()
			for _, n := range tc.existing {
				f.creds = append(f.creds, &credbrokerv1.Credential{Name: n, Version: 1})
			}
			r := runRot(t, f, "", tc.env, append([]string{"import"}, tc.args...)...)
			for _, v := range tutorialValues {
				if strings.Contains(r.stdout+r.stderr, v) || (r.err != nil && strings.Contains(r.err.Error(), v)) {
					t.Fatal("a value was printed")
				}
			}
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) || len(f.imported) != 0 {
					t.Fatalf("err %v, imported %d; want %q and nothing imported", r.err, len(f.imported), tc.wantErr)
				}
				return
			}
			if r.err != nil || !strings.Contains(r.stdout, tc.wantOut) {
				t.Fatalf("err %v out %q, want %q", r.err, r.stdout, tc.wantOut)
			}
			if tc.wantSource == "" {
				if len(f.imported) != 0 {
					t.Fatal("dry run imported")
				}
				return
			}
			if len(f.imported) != 2 || f.imported["scavio_api_key"] != tutorialValues["scavio_api_key"] || f.sources[0] != tc.wantSource {
				t.Fatalf("imported %v from %v", len(f.imported), f.sources)
			}
		})
	}
}

func TestKeysetPruneOffline(t *testing.T) {
	dir := t.TempDir()
	oldPath, newPath, prunedPath, db := filepath.Join(dir, "old.json"), filepath.Join(dir, "new.json"), filepath.Join(dir, "pruned.json"), filepath.Join(dir, "broker.db")
	if r := runRot(t, newRotFake(), "", nil, "keyset", "new", "--out", oldPath); r.err != nil {
		t.Fatal(r.err)
	}
	oldKEK, _ := store.LoadMasterKeyset(oldPath)
	s, err := store.Open(db, oldKEK, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := runRot(t, newRotFake(), "", nil, "keyset", "prune", "--in", oldPath, "--out", prunedPath, "--db", db)
	if r.err == nil || !strings.Contains(r.err.Error(), "stop brokerd, or leave out --db") {
		t.Fatalf("prune while the db is open: %v", r.err)
	}
	s.Close()
	if r := runRot(t, newRotFake(), "", nil, "keyset", "rotate", "--in", oldPath, "--out", newPath); r.err != nil {
		t.Fatal(r.err)
	}
	r = runRot(t, newRotFake(), "", nil, "keyset", "prune", "--in", newPath, "--out", prunedPath, "--db", db)
	if r.err == nil || !strings.Contains(r.err.Error(), "still wraps the database") {
		t.Fatalf("prune before re-wrap: %v", r.err)
	}
	newKEK, _ := store.LoadMasterKeyset(newPath)
	s, err = store.Open(db, newKEK, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.RewrapIfNeeded(newKEK); !ok || err != nil {
		t.Fatalf("rewrap: %v %v", ok, err)
	}
	s.Close()
	r = runRot(t, newRotFake(), "", nil, "keyset", "prune", "--in", newPath, "--out", prunedPath, "--db", db)
	if r.err != nil || !strings.Contains(r.stderr, "wrote pruned master keyset to "+prunedPath) {
		t.Fatalf("prune: %v %q", r.err, r.stderr)
	}
	prunedKEK, err := store.LoadMasterKeyset(prunedPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(db, prunedKEK, store.Options{})
	if err != nil {
		t.Fatalf("pruned keyset does not open the db: %v", err)
	}
	s.Close()

	// Online: the running brokerd says which master key it uses.
	f := newRotFake()
	f.status = &credbrokerv1.StatusResponse{MasterKeyIds: []uint32{1}}
	r = runRot(t, f, "", nil, "keyset", "prune", "--in", newPath, "--out", filepath.Join(dir, "x.json"))
	if r.err == nil || !strings.Contains(r.err.Error(), "does not hold") {
		t.Fatalf("online prune with an unknown key in use: %v", r.err)
	}
}

// `keyset migrate --help` names every kind of master key brokerd accepts: each KMS key URI form
// (from broker/kms's own list, so a scheme added there and not here fails) and a keyset file.
func TestKeysetMigrateHelpNamesEverySource(t *testing.T) {
	r := runCmd(t, &fakeAPI{}, "", nil, "keyset", "migrate", "--help")
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := append(kms.URIForms(), "master keyset file", "--to URI|FILE")
	if len(want) < 5 {
		t.Fatalf("broker/kms lists %d URI forms, want at least hcvault, aws-kms and gcp-kms", len(want)-2)
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("keyset migrate --help does not name %q:\n%s", w, r.stdout)
		}
	}
}
