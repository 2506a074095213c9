package kms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	vault "github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"

	"github.com/credbroker/credbroker/broker/kms/transittest"
	"github.com/credbroker/credbroker/store"
)

// recordedProbe is what the recording encrypted: "dek-bytes" bound to "credbroker/data-keyset",
// and "other" as the wrong associated data.
var recordedProbe = Probe{Plaintext: []byte("dek-bytes"), AAD: []byte("credbroker/data-keyset"), WrongAAD: []byte("other")}

// vaultEnv points the Vault client at srvURL with a token file holding token, and no retries
// (a refused connection fails at once instead of after the client's backoff).
func vaultEnv(t *testing.T, srvURL, token string) (host string) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_ADDR", srvURL)
	t.Setenv("VAULT_TOKEN_FILE", tokenFile)
	t.Setenv("VAULT_TOKEN", "")
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	t.Setenv("VAULT_MAX_RETRIES", "0")
	return strings.TrimPrefix(srvURL, "http://")
}

func transitBackend(t *testing.T, uri string) *transitAEAD {
	t.Helper()
	a, err := Backend(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	tr := a.(*transitAEAD)
	tr.probe = recordedProbe
	return tr
}

// The AEAD brokerd uses sends associated_data exactly as recorded against the real OpenBao, passes
// the self-test on its real answers (the wrong AAD refused with the recorded 400), and learns a
// Transit rotation from the key_version of the recorded encrypt after it: the stored v1 wrapping
// is then stale, and the v1 ciphertext still decrypts.
func TestTransitReplaySelfTestAndRotation(t *testing.T) {
	srv := transittest.NewReplay(t)
	host := vaultEnv(t, srv.URL, transittest.Token)
	uri := "hcvault://" + host + "/transit/keys/fixture-kek"
	tr := transitBackend(t, uri)

	if err := SelfTestWith(tr, recordedProbe); err != nil {
		t.Fatalf("self-test against the recorded OpenBao answers: %v", err)
	}
	want := []string{"transit encrypt with associated_data", "transit decrypt, wrong associated_data", "transit decrypt, right associated_data"}
	if got := srv.Seen(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("replayed %q, want %q", got, want)
	}

	ctx := context.Background()
	k := &KEK{backend: tr, Description: uri}
	v1ct := []byte("vault:v1:W8O8GuCM2egvlP2aXXhIK+IMY2A75PAjLYM/XA4mMf40jGRJKA==")
	if cur, stale, err := NeedsRewrap(ctx, k, [][]byte{v1ct}); err != nil || stale || cur != "1" {
		t.Fatalf("before rotation: current %q stale %v err %v; want 1, false", cur, stale, err)
	}
	// The operator rotates the key in Transit.
	c, _ := vault.NewClient(&vault.Config{Address: srv.URL})
	c.SetToken(transittest.Token)
	if _, err := c.Logical().Write("transit/keys/fixture-kek/rotate", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	cur, stale, err := NeedsRewrap(ctx, k, [][]byte{v1ct})
	if err != nil || !stale || cur != "2" {
		t.Fatalf("after rotation: current %q stale %v err %v; want 2, true", cur, stale, err)
	}
	pt, err := tr.Decrypt(v1ct, recordedProbe.AAD)
	if err != nil || string(pt) != "dek-bytes" {
		t.Fatalf("v1 ciphertext after rotation: %q, %v", pt, err)
	}
}

// A key Transit does not have: the recorded 400 "encryption key not found", with the URI named.
func TestTransitReplayUnknownKey(t *testing.T) {
	srv := transittest.NewReplay(t)
	host := vaultEnv(t, srv.URL, transittest.Token)
	uri := "hcvault://" + host + "/transit/keys/no-such-key"
	tr := transitBackend(t, uri)
	_, err := tr.Decrypt([]byte("vault:v1:W8O8GuCM2egvlP2aXXhIK+IMY2A75PAjLYM/XA4mMf40jGRJKA=="), []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "encryption key not found") || !strings.Contains(err.Error(), uri) {
		t.Fatalf("unknown key: %v", err)
	}
}

// A wrong token: Open fails with Vault's "permission denied", names the URI and never the token.
func TestTransitBadTokenNotLeaked(t *testing.T) {
	srv := transittest.NewReplay(t)
	const bad = "s.wrong-token-0123456789"
	host := vaultEnv(t, srv.URL, bad)
	uri := "hcvault://" + host + "/transit/keys/fixture-kek"
	_, err := Open(context.Background(), uri)
	if err == nil || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), uri) {
		t.Fatalf("bad token: %v", err)
	}
	if strings.Contains(err.Error(), bad) {
		t.Fatalf("the error holds the token: %v", err)
	}
}

// Trap 1: tink-go-hcvault's legacy AEAD (NewClient's) sends the AAD as `context`, which Transit
// ignores for a non-derived key, so a wrong AAD decrypts. The self-test refuses it; the AEAD
// brokerd builds passes against the same server.
func TestSelfTestRefusesAEADThatSendsContext(t *testing.T) {
	sim := transittest.NewSim(t, "fixture-kek")
	sim.SetIgnoreContext(true)
	host := vaultEnv(t, sim.URL, transittest.Token)
	c, err := vault.NewClient(&vault.Config{Address: sim.URL})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(transittest.Token)
	naive, err := hcvault.NewAEAD("/transit/keys/fixture-kek", c.Logical(), hcvault.WithLegacyContextParamater())
	if err != nil {
		t.Fatal(err)
	}
	if err := SelfTest(naive); !errors.Is(err, ErrAADIgnored) {
		t.Fatalf("self-test of the context-sending AEAD: %v, want ErrAADIgnored", err)
	}
	k, err := Open(context.Background(), "hcvault://"+host+"/transit/keys/fixture-kek")
	if err != nil {
		t.Fatalf("Open with the associated_data AEAD: %v", err)
	}
	if k.LastContact().IsZero() {
		t.Fatal("no KMS contact recorded after the self-test")
	}
}

// A KMS that cannot be reached at start: Open fails naming the URI.
func TestOpenOutageNamesURI(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	vaultEnv(t, "http://"+addr, transittest.Token)
	uri := "hcvault://" + addr + "/transit/keys/k"
	_, err = Open(context.Background(), uri)
	if err == nil || !strings.Contains(err.Error(), uri) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("outage at open: %v", err)
	}
}

func TestBackendRefusals(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose-token")
	os.WriteFile(loose, []byte("s.x"), 0o644)
	good := filepath.Join(dir, "token")
	os.WriteFile(good, []byte("s.x"), 0o600)
	for _, tc := range []struct {
		name, uri, addr, tokenFile, token, want string
	}{
		{"aws: not a key ARN", "aws-kms://arn:aws:kms:eu-west-1:111122223333:bucket/abc", "", good, "", "not an AWS KMS key URI"},
		{"gcp: not a key name", "gcp-kms://projects/p/locations/l/keyRings/r", "", good, "", "not a GCP KMS key URI"},
		{"unknown scheme", "s3://x/y", "", good, "", "unknown scheme"},
		{"not a uri", "transit/keys/k", "", good, "", "not a key URI"},
		{"credentials in uri", "hcvault://user:s3cret@127.0.0.1:8200/transit/keys/k", "", good, "", "credentials"},
		{"no keys segment", "hcvault://127.0.0.1:8200/transit/k", "", good, "", "MOUNT/keys/NAME"},
		{"bad key name", "hcvault://127.0.0.1:8200/transit/keys/a%2Fb", "", good, "", "MOUNT/keys/NAME"},
		{"addr names another host", "hcvault://127.0.0.1:8200/transit/keys/k", "http://127.0.0.2:8200", good, "", "make them agree"},
		{"http off loopback", "hcvault://vault.example:8200/transit/keys/k", "http://vault.example:8200", good, "", "in the clear"},
		{"token file readable by others", "hcvault://127.0.0.1:8200/transit/keys/k", "http://127.0.0.1:8200", loose, "", "chmod 600"},
		{"no token at all", "hcvault://127.0.0.1:8200/transit/keys/k", "http://127.0.0.1:8200", "", "", "no Vault token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", tc.addr)
			t.Setenv("VAULT_TOKEN_FILE", tc.tokenFile)
			t.Setenv("VAULT_TOKEN", tc.token)
			t.Setenv("CREDENTIALS_DIRECTORY", "")
			_, err := Backend(context.Background(), tc.uri)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the URI's password: %v", err)
			}
		})
	}
}

// A token from systemd's LoadCredential= ($CREDENTIALS_DIRECTORY/vault-token) is used when no
// VAULT_TOKEN_FILE is set, in preference to VAULT_TOKEN.
func TestVaultTokenFromCredentialsDirectory(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "vault-token"), []byte("s.from-credential\n"), 0o400)
	t.Setenv("VAULT_TOKEN_FILE", "")
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	t.Setenv("VAULT_TOKEN", "s.from-env")
	tok, err := vaultToken()
	if err != nil || tok != "s.from-credential" {
		t.Fatalf("token %q, %v", tok, err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if tok, _ := vaultToken(); tok != "s.from-env" {
		t.Fatalf("token from env: %q", tok)
	}
}

// The Vault token file gets the master keyset file's checks (store.ReadSecretFile): a 0600 file
// of another uid (who could read or swap it) is refused like a loose one, a directory or an empty
// file too; ours is read. No error quotes the token.
func TestVaultTokenFileChecks(t *testing.T) {
	const token = "s.tokenSECRET"
	dir := t.TempDir()
	file := func(name string, mode os.FileMode, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name      string
		path      func(t *testing.T) string
		wantErr   string // "" for accepted
		wantIs    error
		needsRoot string // why the case needs root, or ""
	}{
		{"ours, 0600", func(*testing.T) string { return file("ours", 0o600, token+"\n") }, "", nil, ""},
		{"systemd's, 0400", func(*testing.T) string { return file("credential", 0o400, token) }, "", nil, ""},
		{"another uid's, 0600", func(t *testing.T) string {
			p := file("theirs", 0o600, token)
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return p
		}, "is owned by uid 65534", store.ErrFileOwner, "giving a file to another uid needs root"},
		{"group readable", func(*testing.T) string { return file("loose", 0o640, token) }, "chmod 600", store.ErrSecretFileMode, ""},
		{"a directory", func(*testing.T) string { return dir }, "not a regular file", nil, ""},
		{"empty", func(*testing.T) string { return file("empty", 0o600, " \n") }, "is empty", nil, ""},
		{"too large", func(*testing.T) string { return file("big", 0o600, strings.Repeat("x", maxTokenFile+1)) }, "larger than", nil, ""},
		{"missing", func(*testing.T) string { return filepath.Join(dir, "none") }, "no such file", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needsRoot != "" && os.Geteuid() != 0 {
				t.Skip(tc.needsRoot)
			}
			t.Setenv("VAULT_TOKEN_FILE", tc.path(t))
			t.Setenv("CREDENTIALS_DIRECTORY", "")
			t.Setenv("VAULT_TOKEN", "")
			got, err := vaultToken()
			if tc.wantErr == "" {
				if err != nil || got != token {
					t.Fatalf("token %q, %v; want it read", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || (tc.wantIs != nil && !errors.Is(err, tc.wantIs)) {
				t.Fatalf("err %v, want %q (%v)", err, tc.wantErr, tc.wantIs)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Fatalf("the error quotes the token: %v", err)
			}
		})
	}
}

// The Vault client follows one redirect itself (301, 302, 307), replaying the X-Vault-Token header
// to wherever Location points, even from http on loopback to plain http elsewhere. brokerd sends
// the token only to the URI's host: a redirect is an error naming where it pointed, and the other
// server never hears from it.
func TestTransitNeverFollowsRedirects(t *testing.T) {
	for _, code := range []int{301, 302, 307, 308} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			var tokens atomic.Int32
			sim := transittest.NewSimHandler(t, "fixture-kek")
			other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Vault-Token") != "" {
					tokens.Add(1)
				}
				sim.Handler().ServeHTTP(w, r)
			}))
			t.Cleanup(other.Close)
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(other.URL, "http://"))
			elsewhere := "http://localhost:" + port // another host than the URI's 127.0.0.1
			redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, elsewhere+r.URL.RequestURI(), code)
			}))
			t.Cleanup(redirector.Close)
			host := vaultEnv(t, redirector.URL, transittest.Token)
			tr := transitBackend(t, "hcvault://"+host+"/transit/keys/fixture-kek")

			_, err := tr.Encrypt([]byte("dek"), []byte("ad"))
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("answered %d redirecting to %s", code, elsewhere)) ||
				!strings.Contains(err.Error(), "does not follow redirects") {
				t.Fatalf("encrypt through a %d: %v", code, err)
			}
			if strings.Contains(err.Error(), transittest.Token) {
				t.Fatalf("the error holds the token: %v", err)
			}
			if n := tokens.Load(); n != 0 {
				t.Fatalf("the token was sent to the redirect's target %d time(s)", n)
			}
		})
	}
}

// A Vault answer larger than maxVaultResponse is refused, announced or not, instead of being read
// into memory whole (here a valid Transit answer padded with 2 MiB).
func TestTransitBoundsAnswers(t *testing.T) {
	pad := strings.Repeat("x", 2<<20)
	body := `{"data":{"ciphertext":"vault:v1:AAAA","key_version":1,"pad":"` + pad + `"}}`
	for _, announced := range []bool{true, false} {
		t.Run(fmt.Sprintf("content-length %v", announced), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				if announced {
					w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				}
				io.WriteString(w, body)
			}))
			t.Cleanup(srv.Close)
			host := vaultEnv(t, srv.URL, transittest.Token)
			tr := transitBackend(t, "hcvault://"+host+"/transit/keys/fixture-kek")
			_, err := tr.Encrypt([]byte("dek"), []byte("ad"))
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("the %d-byte limit", maxVaultResponse)) {
				t.Fatalf("a %d-byte answer: %v", len(body), err)
			}
		})
	}
}

// Vault's error text goes into brokerd's errors (its log, the admin's status). A server or a proxy
// in front of it that echoes the request's headers must not put the token there, and a long page
// is cut short.
func TestTransitErrorsNeverQuoteToken(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   func(token string) string
	}{
		{"Vault error list", 400, func(tok string) string {
			return `{"errors":["request with X-Vault-Token ` + tok + ` refused"]}`
		}},
		{"proxy page", 502, func(tok string) string {
			return "<html><body>bad gateway; request headers: X-Vault-Token: " + tok + "\n" + strings.Repeat("<p>filler</p>\n", 4000) + "</body></html>"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body(r.Header.Get("X-Vault-Token")))
			}))
			t.Cleanup(srv.Close)
			host := vaultEnv(t, srv.URL, transittest.Token)
			tr := transitBackend(t, "hcvault://"+host+"/transit/keys/fixture-kek")
			_, err := tr.Decrypt([]byte("vault:v1:AAAA"), []byte("ad"))
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("Vault answered %d", tc.status)) {
				t.Fatalf("decrypt: %v", err)
			}
			if strings.Contains(err.Error(), transittest.Token) {
				t.Fatalf("the error holds the token: %v", err)
			}
			if len(err.Error()) > 2*maxVaultErrorText {
				t.Fatalf("error of %d bytes: Vault's answer was not cut short", len(err.Error()))
			}
		})
	}
}
