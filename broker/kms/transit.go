package kms

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/broker/kms/internal/kmsuri"
	"github.com/credbroker/credbroker/store"
)

// Vault / OpenBao Transit: hcvault://HOST[:PORT]/MOUNT/keys/NAME (MOUNT is usually "transit").
//
// The AEAD is tink-go-hcvault's NewAEAD, which sends the associated data as Transit's
// `associated_data` (checked by AES-GCM for every key). Its older NewClient sends it as `context`,
// which Transit ignores for keys without derivation, so a wrong AAD would still decrypt; Open's
// self-test refuses such an AEAD.
//
// Where to reach it and as whom:
//   - the URI gives the host and port; VAULT_ADDR, if set, gives the scheme (and must name the
//     same host), else https. Plain http is refused unless the host is loopback: the token
//     travels in a header.
//   - the token comes from the file VAULT_TOKEN_FILE, else $CREDENTIALS_DIRECTORY/vault-token
//     (systemd LoadCredential=vault-token:...), else the environment variable VAULT_TOKEN (a
//     file is preferred: an environment is inherited by children and visible in /proc to the
//     same uid). Never from argv, never logged.
//   - TLS settings come from the Vault client's usual variables (VAULT_CACERT, VAULT_CLIENT_CERT,
//     VAULT_CLIENT_KEY, VAULT_TLS_SERVER_NAME), as do VAULT_NAMESPACE and VAULT_MAX_RETRIES.
//   - a redirect is never followed (the Vault client would replay the token to wherever it points,
//     and from http on loopback even to plain http elsewhere), an answer is read up to
//     maxVaultResponse bytes, and Vault's error text is stripped of the token before it reaches
//     an error (a proxy in front of Vault may echo request headers).

// transitKeyName is what Transit accepts as a key name and what we let into a request path.
var transitKeyName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// transitCiphertext is Transit's ciphertext format: "vault:v<version>:<base64>".
var transitCiphertext = regexp.MustCompile(`^vault:v([0-9]+):`)

// transitAEAD is tink-go-hcvault's AEAD plus what brokerd needs from Transit itself.
type transitAEAD struct {
	tink.AEAD
	logical *vault.Logical
	encPath string // MOUNT/encrypt/NAME
	uri     string
	probe   Probe  // what KeyVersion encrypts (DefaultProbe; tests replaying a recording set theirs)
	token   string // only to remove it from Vault's answers in errors
}

var _ Versioned = (*transitAEAD)(nil)

func (t *transitAEAD) Describe() string { return t.uri }

// Encrypt and Decrypt flatten the Vault client's multi-line errors into one line (they name the
// URL and Transit's message, never the token).
func (t *transitAEAD) Encrypt(pt, ad []byte) ([]byte, error) {
	ct, err := t.AEAD.Encrypt(pt, ad)
	return ct, t.wrap("encrypt", err)
}

func (t *transitAEAD) Decrypt(ct, ad []byte) ([]byte, error) {
	pt, err := t.AEAD.Decrypt(ct, ad)
	return pt, t.wrap("decrypt", err)
}

func (t *transitAEAD) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return fmt.Errorf("%s %s: Vault answered %d: %s", op, t.uri, re.StatusCode, t.clean(strings.Join(re.Errors, "; ")))
	}
	return fmt.Errorf("%s %s: %s", op, t.uri, t.clean(err.Error()))
}

// maxVaultErrorText bounds the part of Vault's answer an error quotes (a proxy's HTML page would
// otherwise fill the log line and the caller's status).
const maxVaultErrorText = 512

// clean makes text from or about Vault's answer fit for an error: one line, without the token,
// at most maxVaultErrorText bytes.
func (t *transitAEAD) clean(s string) string {
	if t.token != "" {
		s = strings.ReplaceAll(s, t.token, "[redacted]")
	}
	s = oneLine(s)
	if len(s) > maxVaultErrorText {
		s = strings.ToValidUTF8(s[:maxVaultErrorText], "") + "…"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// maxVaultResponse bounds what is read of one Vault answer: a Transit answer carries a wrapped
// keyset of a few KiB at most.
const maxVaultResponse = 1 << 20

// errVaultRedirect refuses a redirect: the Vault client follows one itself (outside net/http's
// redirect policy) and sends the token along to wherever Location points.
var errVaultRedirect = errors.New("brokerd does not follow redirects from Vault (the token would go along): name the active node in the key URI, or enable request forwarding on the standbys")

// guardTransport is the Vault client's transport: it refuses redirects and bounds answers.
type guardTransport struct{ next http.RoundTripper }

func (g guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		resp.Body.Close()
		to := "elsewhere"
		if loc, err := resp.Location(); err == nil {
			to = loc.Scheme + "://" + loc.Host // the host only: a path or query might carry anything
		}
		return nil, fmt.Errorf("the Vault server answered %d redirecting to %s; %w", resp.StatusCode, to, errVaultRedirect)
	}
	if resp.ContentLength > maxVaultResponse {
		resp.Body.Close()
		return nil, fmt.Errorf("the Vault server's answer is %d bytes, more than the %d-byte limit", resp.ContentLength, maxVaultResponse)
	}
	resp.Body = &cappedBody{rc: resp.Body, left: maxVaultResponse}
	return resp, nil
}

// cappedBody fails a read past its limit instead of returning more.
type cappedBody struct {
	rc   io.ReadCloser
	left int64
}

func (c *cappedBody) Read(p []byte) (int, error) {
	if c.left < 0 {
		return 0, fmt.Errorf("the Vault server's answer is larger than the %d-byte limit", maxVaultResponse)
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1]
	}
	n, err := c.rc.Read(p)
	c.left -= int64(n)
	if c.left < 0 {
		return 0, fmt.Errorf("the Vault server's answer is larger than the %d-byte limit", maxVaultResponse)
	}
	return n, err
}

func (c *cappedBody) Close() error { return c.rc.Close() }

// vaultRetryPolicy is the Vault client's own, except that a refused redirect is not retried.
func vaultRetryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if errors.Is(err, errVaultRedirect) {
		return false, err
	}
	return vault.DefaultRetryPolicy(ctx, resp, err)
}

// KeyVersion encrypts a probe and reads the key_version Transit answers with: the version new
// ciphertexts are made under. It needs only the encrypt capability brokerd has anyway (reading
// transit/keys/NAME would need another policy line).
func (t *transitAEAD) KeyVersion(ctx context.Context) (string, error) {
	s, err := t.logical.WriteWithContext(ctx, t.encPath, map[string]any{
		"plaintext":       base64.StdEncoding.EncodeToString(t.probe.Plaintext),
		"associated_data": base64.StdEncoding.EncodeToString(t.probe.AAD),
	})
	if err != nil {
		return "", t.wrap("encrypt", err)
	}
	if s == nil {
		return "", fmt.Errorf("encrypt %s: empty answer", t.uri)
	}
	switch v := s.Data["key_version"].(type) {
	case json.Number:
		return v.String(), nil
	case float64:
		return fmt.Sprint(int64(v)), nil
	}
	// An older server without key_version: the ciphertext says it too.
	ct, _ := s.Data["ciphertext"].(string)
	return t.CiphertextVersion([]byte(ct))
}

// CiphertextVersion reads N from "vault:vN:...".
func (t *transitAEAD) CiphertextVersion(ct []byte) (string, error) {
	m := transitCiphertext.FindSubmatch(ct)
	if m == nil {
		return "", fmt.Errorf("not a Transit ciphertext (no vault:vN: prefix); was the database wrapped under %s?", t.uri)
	}
	return string(m[1]), nil
}

func openTransit(ctx context.Context, u *url.URL) (tink.AEAD, error) {
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--master-key-uri %s: credentials, a query or a fragment do not belong in the URI (the token comes from VAULT_TOKEN_FILE or $CREDENTIALS_DIRECTORY/vault-token)", kmsuri.Redact(u.String()))
	}
	uri := u.String()
	if u.Host == "" {
		return nil, fmt.Errorf("--master-key-uri %s: no host (hcvault://HOST[:PORT]/transit/keys/NAME)", uri)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) < 3 || parts[len(parts)-2] != "keys" || !transitKeyName.MatchString(parts[len(parts)-1]) {
		return nil, fmt.Errorf("--master-key-uri %s: want hcvault://HOST[:PORT]/MOUNT/keys/NAME (e.g. /transit/keys/credbroker)", uri)
	}
	for _, p := range parts[:len(parts)-2] {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("--master-key-uri %s: bad mount path", uri)
		}
	}
	mount, name := strings.Join(parts[:len(parts)-2], "/"), parts[len(parts)-1]

	addr, err := vaultAddress(u.Host)
	if err != nil {
		return nil, fmt.Errorf("--master-key-uri %s: %w", uri, err)
	}
	token, err := vaultToken()
	if err != nil {
		return nil, fmt.Errorf("--master-key-uri %s: %w", uri, err)
	}
	cfg := vault.DefaultConfig() // reads VAULT_CACERT, VAULT_MAX_RETRIES, ... (not VAULT_ADDR: set below)
	if cfg.Error != nil {
		return nil, fmt.Errorf("--master-key-uri %s: Vault client settings: %w", uri, cfg.Error)
	}
	cfg.Address = addr
	cfg.AgentAddress = "" // VAULT_AGENT_ADDR would send the token to another host than the URI's
	cfg.DisableRedirects = true
	cfg.CheckRetry = vaultRetryPolicy
	if os.Getenv("VAULT_CLIENT_TIMEOUT") == "" {
		cfg.Timeout = 15 * time.Second
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("--master-key-uri %s: Vault client: %w", uri, err)
	}
	cfg.HttpClient.Transport = guardTransport{next: cfg.HttpClient.Transport}
	c.SetToken(token)
	a, err := hcvault.NewAEAD("/"+mount+"/keys/"+name, c.Logical())
	if err != nil {
		return nil, fmt.Errorf("--master-key-uri %s: %w", uri, err)
	}
	return &transitAEAD{AEAD: a, logical: c.Logical(), encPath: mount + "/encrypt/" + name, uri: uri, probe: DefaultProbe, token: token}, nil
}

// vaultAddress is VAULT_ADDR's scheme with the URI's host; VAULT_ADDR naming another host is an
// error (two places disagreeing on where the KEK lives).
func vaultAddress(host string) (string, error) {
	scheme := "https"
	if env := os.Getenv("VAULT_ADDR"); env != "" {
		a, err := url.Parse(env)
		if err != nil || a.Host == "" {
			return "", fmt.Errorf("VAULT_ADDR %q is not a URL like https://HOST:8200", env)
		}
		if !strings.EqualFold(a.Host, host) {
			return "", fmt.Errorf("VAULT_ADDR names %s but the key URI names %s; make them agree", a.Host, host)
		}
		scheme = strings.ToLower(a.Scheme)
	}
	switch scheme {
	case "https":
	case "http":
		if !loopbackHost(host) {
			return "", fmt.Errorf("VAULT_ADDR is http:// for %s, which is not loopback: the Vault token would travel in the clear; use https", host)
		}
	default:
		return "", fmt.Errorf("VAULT_ADDR scheme %q: want https (or http on loopback)", scheme)
	}
	return scheme + "://" + host, nil
}

func loopbackHost(hostport string) bool {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// maxTokenFile bounds what we read as a token (Vault tokens are under 200 bytes).
const maxTokenFile = 64 << 10

// vaultToken finds the Vault token: VAULT_TOKEN_FILE, $CREDENTIALS_DIRECTORY/vault-token, then
// VAULT_TOKEN. Messages name the file, never the token.
func vaultToken() (string, error) {
	path := os.Getenv("VAULT_TOKEN_FILE")
	if path == "" {
		if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
			if p := filepath.Join(dir, "vault-token"); fileExists(p) {
				path = p
			}
		}
	}
	if path != "" {
		return readTokenFile(path)
	}
	if t := strings.TrimSpace(os.Getenv("VAULT_TOKEN")); t != "" {
		return t, nil
	}
	return "", errors.New("no Vault token: set VAULT_TOKEN_FILE to a file holding it (mode 0600), or pass it as the systemd credential vault-token (LoadCredential=vault-token:PATH), or set VAULT_TOKEN")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readTokenFile reads the Vault token file with the master keyset file's checks (store.ReadSecretFile):
// a regular file, no group or other bits, owned by brokerd's uid or root. The token is as good
// as the master key (it decrypts the keysets), so a file another user owns (and so may read or
// swap) is refused like a keyset would be.
func readTokenFile(path string) (string, error) {
	buf, err := store.ReadSecretFile(path, "the Vault token file", maxTokenFile)
	if err != nil {
		return "", err
	}
	t := strings.TrimSpace(string(buf))
	clear(buf)
	if t == "" {
		return "", fmt.Errorf("the Vault token file %s is empty", path)
	}
	return t, nil
}
