// Package gcpkms is a Tink AEAD whose key never leaves Google Cloud KMS: Encrypt and Decrypt are
// the Cloud KMS v1 REST calls cryptoKeys.encrypt and cryptoKeys.decrypt on one symmetric key,
// named by a URI gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K.
//
// Why not tink-go-gcpkms: v2.4.0 is maintained and sound, but it brings cloud.google.com/go/kms
// and google.golang.org/api with their transports: measured on 2026-12-03, a program that only
// opens a gcpkms client links 331 non-standard-library packages (OpenTelemetry, gax, s2a,
// enterprise-certificate-proxy, …) and is 27 MB, against 28 packages and 10 MB for one that only
// gets credentials with golang.org/x/oauth2/google (already in credbroker's module graph). The
// AEAD needs two JSON POSTs, so this package makes them itself with an oauth2 HTTP client and
// follows the same protocol as Tink's: the associated data goes to KMS as
// additionalAuthenticatedData, and every request and answer carries CRC32C checksums that are
// checked (https://cloud.google.com/kms/docs/data-integrity-guidelines). Ciphertexts are Cloud
// KMS's own, so tink-go-gcpkms and this package open each other's.
//
// Credentials come from Google's Application Default Credentials chain
// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application_default_credentials.json, the metadata
// server), with the scope https://www.googleapis.com/auth/cloudkms; never from argv.
//
// Rotation: a Cloud KMS ciphertext names the key version that made it, and Decrypt on the key
// opens it for as long as that version is enabled; Encrypt uses the primary version. KeyVersion
// reports the primary, so that a caller can re-wrap after a rotation (and the operator can then
// disable the old version).
//
// This package never logs. Its errors name the key, the operation and Google's status code; never
// a credential, a plaintext, the associated data or a response body.
package gcpkms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/credbroker/credbroker/broker/kms/internal/kmsuri"
)

// URIPrefix is the scheme of the key URIs this package opens.
const URIPrefix = "gcp-kms://"

// DefaultEndpoint is the Cloud KMS REST endpoint.
const DefaultEndpoint = "https://cloudkms.googleapis.com/"

// Scope is the OAuth scope the credentials are asked for.
const Scope = "https://www.googleapis.com/auth/cloudkms"

// CallTimeout bounds one Encrypt or Decrypt (token refresh included): tink.AEAD has no context.
const CallTimeout = 30 * time.Second

// ErrBadURI reports a key URI this package cannot use.
var ErrBadURI = errors.New("not a GCP KMS key URI")

// ErrUnreachable wraps a failure to get an answer from Cloud KMS or from the token endpoint, as
// opposed to an answer that refuses the request (KMSError).
var ErrUnreachable = errors.New("GCP KMS unreachable")

// ErrCorrupted reports an answer whose checksum does not match its data (or that lacks the
// checksum verification), corrupted on the way: retrying is the fix.
var ErrCorrupted = errors.New("GCP KMS answer failed its integrity check")

// A KMSError is Cloud KMS's refusal of a request: a wrong associated data or another key's
// ciphertext is INVALID_ARGUMENT, missing permissions PERMISSION_DENIED, a disabled or destroyed
// key version FAILED_PRECONDITION, a bad token UNAUTHENTICATED.
type KMSError struct {
	Key        string // the key name, projects/…/cryptoKeys/K
	Op         string // "Encrypt", "Decrypt" or "Get"
	HTTPStatus int
	Status     string // Google's status code, e.g. "INVALID_ARGUMENT"
}

func (e *KMSError) Error() string {
	return fmt.Sprintf("gcp-kms key %s: %s refused by KMS: %s (HTTP %d)", e.Key, e.Op, e.Status, e.HTTPStatus)
}

// oauthErrorCode is the shape of an RFC 6749 error code (invalid_grant, …): nothing else from a
// token endpoint's body goes into an error.
var oauthErrorCode = regexp.MustCompile(`^[a-z_]{1,64}$`)

var keyName = regexp.MustCompile(`^projects/[a-z0-9-]+/locations/[a-zA-Z0-9_-]+/keyRings/[a-zA-Z0-9_-]+/cryptoKeys/[a-zA-Z0-9_-]+$`)

// An Option changes how New reaches Cloud KMS.
type Option func(*options)

type options struct {
	endpoint string
	client   *http.Client
}

// WithEndpoint sends the KMS requests to endpoint (e.g. a regional endpoint, or a fake in tests)
// instead of DefaultEndpoint.
func WithEndpoint(endpoint string) Option {
	return func(o *options) { o.endpoint = strings.TrimSuffix(endpoint, "/") + "/" }
}

// WithHTTPClient uses c as is, instead of an HTTP client with Application Default Credentials: c
// must add the credentials itself.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// AEAD is a tink.AEAD over one Cloud KMS key. It is safe for concurrent use.
type AEAD struct {
	key      string
	endpoint string
	client   *http.Client
}

var _ tink.AEAD = (*AEAD)(nil)

// New returns the AEAD for uri with Application Default Credentials and the default endpoint. It
// finds the credentials but makes no KMS call: run a self-test round trip to know at start that
// KMS answers. The result is an *AEAD (for KeyVersion and Describe).
func New(ctx context.Context, uri string) (tink.AEAD, error) { return NewWithOptions(ctx, uri) }

// NewWithOptions is New with options (endpoint, HTTP client).
func NewWithOptions(ctx context.Context, uri string, opts ...Option) (*AEAD, error) {
	key, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	o := options{endpoint: DefaultEndpoint}
	for _, opt := range opts {
		opt(&o)
	}
	if o.client == nil {
		creds, err := google.FindDefaultCredentials(ctx, Scope)
		if err != nil {
			// The chain's errors name where it looked (files, the metadata server), no secret.
			return nil, fmt.Errorf("gcp-kms key %s: finding Application Default Credentials: %w", key, err)
		}
		// The token source outlives ctx (New's context is for set-up only), so it gets its own.
		o.client = oauth2.NewClient(context.Background(), creds.TokenSource)
		// oauth2's transport adds the bearer token to every request it sends, a redirected one
		// too (net/http's dropping of Authorization across hosts comes before it), so a redirect
		// would hand the token to wherever Location points. Cloud KMS does not redirect API
		// calls: a 3xx is answered as the refusal it is.
		o.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return &AEAD{key: key, endpoint: o.endpoint, client: o.client}, nil
}

// ParseURI returns the key name of a gcp-kms:// URI.
func ParseURI(uri string) (string, error) {
	rest, ok := strings.CutPrefix(uri, URIPrefix)
	if !ok {
		return "", fmt.Errorf("%w: %q does not start with %s", ErrBadURI, kmsuri.Redact(uri), URIPrefix)
	}
	if !keyName.MatchString(rest) {
		return "", fmt.Errorf("%w: %q: want %sprojects/P/locations/L/keyRings/R/cryptoKeys/K", ErrBadURI, kmsuri.Redact(uri), URIPrefix)
	}
	return rest, nil
}

// KeyName returns the key's resource name, projects/…/cryptoKeys/K.
func (a *AEAD) KeyName() string { return a.key }

// Describe names the key source for status and health output: the URI and, when not the default,
// the endpoint; nothing secret.
func (a *AEAD) Describe() string {
	if a.endpoint != DefaultEndpoint {
		return URIPrefix + a.key + " at " + a.endpoint
	}
	return URIPrefix + a.key
}

// crc is the CRC32C (Castagnoli) of b, the checksum Cloud KMS uses.
func crc(b []byte) int64 { return int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))) }

// int64String is a proto3 JSON int64: a decimal string (a bare number is accepted too).
type int64String int64

func (n int64String) MarshalJSON() ([]byte, error) {
	return []byte(`"` + strconv.FormatInt(int64(n), 10) + `"`), nil
}

func (n *int64String) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(strings.Trim(string(b), `"`), 10, 64)
	*n = int64String(v)
	return err
}

type encryptRequest struct {
	Plaintext                         []byte      `json:"plaintext"`
	PlaintextCrc32c                   int64String `json:"plaintextCrc32c"`
	AdditionalAuthenticatedData       []byte      `json:"additionalAuthenticatedData"`
	AdditionalAuthenticatedDataCrc32c int64String `json:"additionalAuthenticatedDataCrc32c"`
}

type encryptResponse struct {
	Name                                      string      `json:"name"`
	Ciphertext                                []byte      `json:"ciphertext"`
	CiphertextCrc32c                          int64String `json:"ciphertextCrc32c"`
	VerifiedPlaintextCrc32c                   bool        `json:"verifiedPlaintextCrc32c"`
	VerifiedAdditionalAuthenticatedDataCrc32c bool        `json:"verifiedAdditionalAuthenticatedDataCrc32c"`
}

type decryptRequest struct {
	Ciphertext                        []byte      `json:"ciphertext"`
	CiphertextCrc32c                  int64String `json:"ciphertextCrc32c"`
	AdditionalAuthenticatedData       []byte      `json:"additionalAuthenticatedData"`
	AdditionalAuthenticatedDataCrc32c int64String `json:"additionalAuthenticatedDataCrc32c"`
}

type decryptResponse struct {
	Plaintext       []byte      `json:"plaintext"`
	PlaintextCrc32c int64String `json:"plaintextCrc32c"`
}

// Encrypt encrypts plaintext under the key's primary version, bound to associatedData.
func (a *AEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	var resp encryptResponse
	err := a.call("Encrypt", http.MethodPost, ":encrypt", &encryptRequest{
		Plaintext:                         plaintext,
		PlaintextCrc32c:                   int64String(crc(plaintext)),
		AdditionalAuthenticatedData:       associatedData,
		AdditionalAuthenticatedDataCrc32c: int64String(crc(associatedData)),
	}, &resp)
	if err != nil {
		return nil, err
	}
	switch {
	case !resp.VerifiedPlaintextCrc32c || !resp.VerifiedAdditionalAuthenticatedDataCrc32c:
		return nil, fmt.Errorf("gcp-kms key %s: Encrypt: %w: KMS did not verify the request's checksums", a.key, ErrCorrupted)
	case int64(resp.CiphertextCrc32c) != crc(resp.Ciphertext):
		return nil, fmt.Errorf("gcp-kms key %s: Encrypt: %w: ciphertext checksum mismatch", a.key, ErrCorrupted)
	case !strings.HasPrefix(resp.Name, a.key+"/cryptoKeyVersions/"):
		// An answer naming another key's version is not ours to keep.
		return nil, &KMSError{Key: a.key, Op: "Encrypt", HTTPStatus: http.StatusOK, Status: "answer from another key"}
	}
	return resp.Ciphertext, nil
}

// Decrypt decrypts ciphertext with the key (whichever of its versions made it). Cloud KMS refuses
// a ciphertext made under another key.
func (a *AEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	var resp decryptResponse
	err := a.call("Decrypt", http.MethodPost, ":decrypt", &decryptRequest{
		Ciphertext:                        ciphertext,
		CiphertextCrc32c:                  int64String(crc(ciphertext)),
		AdditionalAuthenticatedData:       associatedData,
		AdditionalAuthenticatedDataCrc32c: int64String(crc(associatedData)),
	}, &resp)
	if err != nil {
		return nil, err
	}
	if int64(resp.PlaintextCrc32c) != crc(resp.Plaintext) {
		return nil, fmt.Errorf("gcp-kms key %s: Decrypt: %w: plaintext checksum mismatch", a.key, ErrCorrupted)
	}
	return resp.Plaintext, nil
}

// KeyVersion returns the name of the key's primary version (…/cryptoKeyVersions/N), the one
// Encrypt uses: when it changes, the key was rotated and a re-wrap moves to the new version. It
// needs the cloudkms.cryptoKeys.get permission, beyond encrypt and decrypt.
func (a *AEAD) KeyVersion(ctx context.Context) (string, error) {
	var resp struct {
		Primary struct {
			Name string `json:"name"`
		} `json:"primary"`
	}
	if err := a.callContext(ctx, "Get", http.MethodGet, "", nil, &resp); err != nil {
		return "", err
	}
	if !strings.HasPrefix(resp.Primary.Name, a.key+"/cryptoKeyVersions/") {
		return "", fmt.Errorf("gcp-kms key %s: Get: the key has no primary version (not a symmetric encryption key?)", a.key)
	}
	return resp.Primary.Name, nil
}

func (a *AEAD) call(op, method, verb string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	return a.callContext(ctx, op, method, verb, in, out)
}

// callContext sends one REST request on the key (verb ":encrypt", ":decrypt", or "" for the key
// itself) and decodes the answer. Response bodies never reach an error: only Google's status code.
func (a *AEAD) callContext(ctx context.Context, op, method, verb string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("gcp-kms key %s: %s: %w", a.key, op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.endpoint+"v1/"+a.key+verb, body)
	if err != nil {
		return fmt.Errorf("gcp-kms key %s: %s: %w", a.key, op, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return a.transportError(op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return a.transportError(op, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Status string `json:"status"`
			} `json:"error"`
		}
		status := "UNKNOWN"
		if json.Unmarshal(b, &e) == nil && e.Error.Status != "" {
			status = e.Error.Status
		}
		return &KMSError{Key: a.key, Op: op, HTTPStatus: resp.StatusCode, Status: status}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("gcp-kms key %s: %s: %w: the answer is not Cloud KMS JSON", a.key, op, ErrCorrupted)
	}
	return nil
}

// transportError keeps a failed token fetch's HTTP status and OAuth error code but drops its
// body, and says the KMS was not reached.
func (a *AEAD) transportError(op string, err error) error {
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		code := rerr.ErrorCode
		if code == "" {
			// x/oauth2/jwt leaves the OAuth error code in the body; take that field alone.
			var body struct {
				Error string `json:"error"`
			}
			if json.Unmarshal(rerr.Body, &body) == nil && oauthErrorCode.MatchString(body.Error) {
				code = body.Error
			} else {
				code = "no OAuth error code"
			}
		}
		status := 0
		if rerr.Response != nil {
			status = rerr.Response.StatusCode
		}
		return fmt.Errorf("gcp-kms key %s: %s: fetching an access token was refused: HTTP %d, %s", a.key, op, status, code)
	}
	return fmt.Errorf("gcp-kms key %s: %s: %w: %w", a.key, op, ErrUnreachable, err)
}
