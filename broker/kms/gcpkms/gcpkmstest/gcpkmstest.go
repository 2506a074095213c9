// Package gcpkmstest is a fake of the Cloud KMS v1 REST API for tests (no GCP KMS emulator exists):
// cryptoKeys.encrypt, cryptoKeys.decrypt and cryptoKeys.get on symmetric keys with versions, and
// an OAuth token endpoint for service-account credentials, so that a client goes through Google's
// real Application Default Credentials chain.
//
// It is a real cipher, not a recorder: each key version is an AES-256-GCM key, the associated data
// (and the key name) are authenticated, so a wrong associated data or another key's ciphertext is
// refused with INVALID_ARGUMENT as Cloud KMS does, and the CRC32C checksums are checked both ways.
// Every KMS request must carry a bearer token the token endpoint issued. Loopback only.
package gcpkmstest

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Server is a running fake.
type Server struct {
	// URL is the endpoint to give gcpkms.WithEndpoint.
	URL string

	srv *httptest.Server
	key *rsa.PrivateKey // the service account's key, whose public half verifies token grants

	mu       sync.Mutex
	keys     map[string]*cryptoKey
	tokens   map[string]bool
	down     bool
	requests map[string]int
}

type cryptoKey struct {
	versions [][]byte // AES-256 keys; version N is versions[N-1]
	primary  int      // 1-based
}

// Start runs the fake for the life of t.
func Start(t testing.TB) *Server {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{key: k, keys: map[string]*cryptoKey{}, tokens: map[string]bool{}, requests: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("/v1/", s.kms)
	s.srv = httptest.NewServer(mux)
	s.URL = s.srv.URL + "/"
	t.Cleanup(s.srv.Close)
	return s
}

// CreateKey adds a symmetric key with one version and returns its name.
func (s *Server) CreateKey(t testing.TB, name string) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[name] = &cryptoKey{versions: [][]byte{newKey(t)}, primary: 1}
	return name
}

// Rotate adds a version to the key and makes it primary (what a scheduled or manual rotation does).
func (s *Server) Rotate(t testing.TB, name string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	k.versions = append(k.versions, newKey(t))
	k.primary = len(k.versions)
}

// SetDown makes every KMS request fail at the connection (the server hangs up) while down holds.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// Requests reports how many requests of a kind ("encrypt", "decrypt", "get", "token") were served.
func (s *Server) Requests(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[kind]
}

// CredentialsFile writes a service-account key file whose token_uri is this fake, for
// GOOGLE_APPLICATION_CREDENTIALS, and returns its path.
func (s *Server) CredentialsFile(t testing.TB) string {
	t.Helper()
	return s.credentialsFile(t, s.key)
}

// UntrustedCredentialsFile is CredentialsFile with a key the fake does not know: its token
// endpoint refuses the grant (invalid_grant), as Google's does for a deleted service-account key.
func (s *Server) UntrustedCredentialsFile(t testing.TB) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return s.credentialsFile(t, k)
}

func (s *Server) credentialsFile(t testing.TB, key *rsa.PrivateKey) string {
	der := x509.MarshalPKCS1PrivateKey(key)
	b, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "credbroker-test",
		"private_key_id": "fake-key-1",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})),
		"client_email":   "brokerd@credbroker-test.iam.gserviceaccount.com",
		"client_id":      "1",
		"token_uri":      s.srv.URL + "/token",
	})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "service-account.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// token serves the JWT-bearer grant of a service account: it verifies the assertion's RS256
// signature with the account's public key and issues an opaque access token.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.count("token")
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthError(w, "unsupported_grant_type")
		return
	}
	parts := strings.Split(r.PostForm.Get("assertion"), ".")
	if len(parts) != 3 {
		oauthError(w, "invalid_grant")
		return
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err != nil || rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, sum[:], sig) != nil {
		oauthError(w, "invalid_grant")
		return
	}
	access := s.AccessToken()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": access, "token_type": "Bearer", "expires_in": 3600})
}

// AccessToken issues an access token the fake accepts, for a client given its own HTTP client
// (gcpkms.WithHTTPClient) instead of going through the token endpoint.
func (s *Server) AccessToken() string {
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	access := "fake-access-" + base64.RawURLEncoding.EncodeToString(tok)
	s.mu.Lock()
	s.tokens[access] = true
	s.mu.Unlock()
	return access
}

func oauthError(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": "refused by the fake"})
}

func crc(b []byte) int64 { return int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))) }

// b64 is a proto3 JSON bytes field: base64 in either alphabet, padded or not (tink-go-gcpkms
// sends the URL-safe one, encoding/json the standard one; Cloud KMS accepts both).
type b64 []byte

func (v *b64) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return err
	}
	str = strings.TrimRight(strings.NewReplacer("-", "+", "_", "/").Replace(str), "=")
	d, err := base64.RawStdEncoding.DecodeString(str)
	*v = d
	return err
}

// num is a proto3 JSON int64 (a decimal string); present tells whether the field was sent.
type num struct {
	v       int64
	present bool
}

func (n *num) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(strings.Trim(string(b), `"`), 10, 64)
	*n = num{v: v, present: true}
	return err
}

func (s *Server) kms(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
	}
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	valid := ok && s.tokens[auth]
	s.mu.Unlock()
	if !valid {
		googleError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
		return
	}
	name, verb, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/"), ":")
	s.mu.Lock()
	key := s.keys[name]
	var versions [][]byte
	primary := 0
	if key != nil {
		versions, primary = append([][]byte(nil), key.versions...), key.primary
	}
	s.mu.Unlock()
	if key == nil {
		// Cloud KMS says PERMISSION_DENIED for a key that does not exist or is not yours.
		googleError(w, http.StatusForbidden, "PERMISSION_DENIED", "Permission denied on resource (or it may not exist).")
		return
	}
	switch {
	case r.Method == http.MethodGet && verb == "":
		s.count("get")
		writeJSON(w, map[string]any{"name": name, "purpose": "ENCRYPT_DECRYPT",
			"primary": map[string]any{"name": fmt.Sprintf("%s/cryptoKeyVersions/%d", name, primary), "state": "ENABLED"}})
	case r.Method == http.MethodPost && verb == "encrypt":
		s.count("encrypt")
		var in struct {
			Plaintext, AdditionalAuthenticatedData             b64
			PlaintextCrc32c, AdditionalAuthenticatedDataCrc32c num
		}
		if !decode(w, r, &in) || !checksums(w, in.Plaintext, in.PlaintextCrc32c, in.AdditionalAuthenticatedData, in.AdditionalAuthenticatedDataCrc32c) {
			return
		}
		ct := seal(versions[primary-1], uint32(primary), name, in.Plaintext, in.AdditionalAuthenticatedData)
		writeJSON(w, map[string]any{
			"name":                    fmt.Sprintf("%s/cryptoKeyVersions/%d", name, primary),
			"ciphertext":              ct,
			"ciphertextCrc32c":        strconv.FormatInt(crc(ct), 10),
			"verifiedPlaintextCrc32c": in.PlaintextCrc32c.present,
			"verifiedAdditionalAuthenticatedDataCrc32c": in.AdditionalAuthenticatedDataCrc32c.present,
			"protectionLevel": "SOFTWARE",
		})
	case r.Method == http.MethodPost && verb == "decrypt":
		s.count("decrypt")
		var in struct {
			Ciphertext, AdditionalAuthenticatedData             b64
			CiphertextCrc32c, AdditionalAuthenticatedDataCrc32c num
		}
		if !decode(w, r, &in) || !checksums(w, in.Ciphertext, in.CiphertextCrc32c, in.AdditionalAuthenticatedData, in.AdditionalAuthenticatedDataCrc32c) {
			return
		}
		pt, ok := open(versions, name, in.Ciphertext, in.AdditionalAuthenticatedData)
		if !ok {
			googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
			return
		}
		writeJSON(w, map[string]any{"plaintext": pt, "plaintextCrc32c": strconv.FormatInt(crc(pt), 10), "protectionLevel": "SOFTWARE"})
	default:
		googleError(w, http.StatusNotFound, "NOT_FOUND", "unknown method")
	}
}

func (s *Server) count(kind string) {
	s.mu.Lock()
	s.requests[kind]++
	s.mu.Unlock()
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid JSON payload received.")
		return false
	}
	return true
}

// checksums refuses a request whose CRC32C fields (when sent) do not match, as Cloud KMS does.
func checksums(w http.ResponseWriter, data []byte, dataCRC num, aad []byte, aadCRC num) bool {
	if (dataCRC.present && dataCRC.v != crc(data)) || (aadCRC.present && aadCRC.v != crc(aad)) {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "The checksum in field ... did not match the data.")
		return false
	}
	return true
}

// seal makes version(4) || nonce(12) || AES-GCM(plaintext), authenticating the key name and the
// associated data, so neither another key nor another associated data can open it.
func seal(key []byte, version uint32, name string, plaintext, aad []byte) []byte {
	g := gcm(key)
	out := binary.BigEndian.AppendUint32(nil, version)
	nonce := make([]byte, g.NonceSize())
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return g.Seal(out, nonce, plaintext, boundAAD(name, aad))
}

func open(versions [][]byte, name string, ct, aad []byte) ([]byte, bool) {
	if len(ct) < 4+12 {
		return nil, false
	}
	v := binary.BigEndian.Uint32(ct)
	if v < 1 || int(v) > len(versions) {
		return nil, false
	}
	g := gcm(versions[v-1])
	pt, err := g.Open(nil, ct[4:16], ct[16:], boundAAD(name, aad))
	return pt, err == nil
}

func boundAAD(name string, aad []byte) []byte {
	return append(append([]byte(name), 0), aad...)
}

func gcm(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func googleError(w http.ResponseWriter, code int, status, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": status}})
}
