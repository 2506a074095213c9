// Package awskms is a Tink AEAD whose key never leaves AWS KMS: Encrypt and Decrypt are KMS
// Encrypt and Decrypt calls on one symmetric key, named by a URI
// aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID (or …:alias/NAME).
//
// Why not tink-go-awskms: its v2.1.0 is built on the AWS SDK for Go v1, which is past end of
// support. The Tink AEAD interface is two methods, so this package implements it over the
// maintained SDK v2 KMS client instead, and stays wire-compatible with tink-go-awskms v2: the
// associated data goes into the KMS EncryptionContext, hex-encoded, under the key "associatedData"
// (the default of tink-go-awskms's NewClientWithOptions and of Tink's AWS KMS extensions in the
// other languages), and is left out when empty. WithLegacyAdditionalData selects the key
// "additionalData" of tink-go-awskms's older, deprecated NewClient instead. A ciphertext made by
// one can be opened by the other with the same choice of key.
//
// Credentials, region defaults and the endpoint come from the SDK's default chain (environment
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE and the shared files, web
// identity, the instance role; AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL to point at an emulator such
// as local-kms), never from argv. The region is the one in the key's ARN.
//
// Rotation: AWS KMS rotates a key's backing material transparently. A ciphertext records the
// backing version it was made with and KMS opens it with that version for as long as the key
// exists, so there is no key version for a caller to watch and nothing to re-wrap after an AWS
// rotation (unlike Vault Transit's key versions).
//
// This package never logs. Its errors name the key ARN, the KMS operation and the KMS error code;
// never a credential, a plaintext or the associated data.
package awskms

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/broker/kms/internal/kmsuri"
)

// URIPrefix is the scheme of the key URIs this package opens.
const URIPrefix = "aws-kms://"

// EncryptionContextKey is the EncryptionContext key that carries the hex-encoded associated data,
// as tink-go-awskms's NewClientWithOptions (AssociatedData) names it.
const EncryptionContextKey = "associatedData"

// LegacyEncryptionContextKey is the key of tink-go-awskms's deprecated NewClient
// (LegacyAdditionalData), for ciphertexts made with it.
const LegacyEncryptionContextKey = "additionalData"

// CallTimeout bounds one Encrypt or Decrypt (the SDK's retries included): tink.AEAD has no context,
// and a KMS that never answers must not hang the caller.
const CallTimeout = 30 * time.Second

// ErrBadURI reports a key URI this package cannot use.
var ErrBadURI = errors.New("not an AWS KMS key URI")

// ErrUnreachable wraps a failure to get any answer from KMS (connection refused, DNS, timeout), as
// opposed to an answer that refuses the request (KMSError).
var ErrUnreachable = errors.New("AWS KMS unreachable")

// A KMSError is KMS's refusal of a request: a wrong associated data or a ciphertext under another
// key is InvalidCiphertextException (IncorrectKeyException on some paths), missing permissions
// AccessDeniedException, a disabled key DisabledException.
type KMSError struct {
	KeyARN string // the key the request was for
	Op     string // "Encrypt" or "Decrypt"
	Code   string // the KMS error code, e.g. "InvalidCiphertextException"
}

func (e *KMSError) Error() string {
	return fmt.Sprintf("aws-kms key %s: %s refused by KMS: %s", e.KeyARN, e.Op, e.Code)
}

// keyARN matches the two ARN forms a KMS Encrypt accepts for a named key: key/ID and alias/NAME,
// in any partition (aws, aws-cn, aws-us-gov, …).
var keyARN = regexp.MustCompile(`^arn:(aws[a-z-]*):kms:([a-z0-9-]+):([0-9]{12}):(key|alias)/([A-Za-z0-9/_+=.@-]+)$`)

// AEAD is a tink.AEAD over one AWS KMS key. It is safe for concurrent use.
type AEAD struct {
	arn        string
	isAlias    bool
	contextKey string
	client     *kms.Client
}

// An Option changes New's defaults.
type Option func(*AEAD)

// WithLegacyAdditionalData carries the associated data under LegacyEncryptionContextKey, to open
// ciphertexts made by tink-go-awskms's deprecated NewClient.
func WithLegacyAdditionalData() Option {
	return func(a *AEAD) { a.contextKey = LegacyEncryptionContextKey }
}

var _ tink.AEAD = (*AEAD)(nil)

// New returns the AEAD for uri (aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID or …:alias/NAME). It
// loads the SDK's default configuration but makes no KMS call: a KMS that is down shows up at the
// first Encrypt or Decrypt (run a self-test round trip to find out at start).
//
// The result is an *AEAD (for KeyARN and Describe); the signature is the one every KMS package under
// broker/kms shares.
func New(ctx context.Context, uri string) (tink.AEAD, error) { return NewWithOptions(ctx, uri) }

// NewWithOptions is New with options.
func NewWithOptions(ctx context.Context, uri string, opts ...Option) (*AEAD, error) {
	arn, region, isAlias, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		// The SDK's configuration errors name files and profiles, not secret values.
		return nil, fmt.Errorf("aws-kms key %s: loading the AWS SDK configuration: %w", arn, err)
	}
	a := &AEAD{arn: arn, isAlias: isAlias, contextKey: EncryptionContextKey, client: kms.NewFromConfig(cfg)}
	for _, opt := range opts {
		opt(a)
	}
	return a, nil
}

// ParseURI splits an aws-kms:// URI into the key ARN and its region, and reports whether the ARN
// names an alias.
func ParseURI(uri string) (arn, region string, isAlias bool, err error) {
	rest, ok := strings.CutPrefix(uri, URIPrefix)
	if !ok {
		return "", "", false, fmt.Errorf("%w: %q does not start with %s", ErrBadURI, kmsuri.Redact(uri), URIPrefix)
	}
	m := keyARN.FindStringSubmatch(rest)
	if m == nil {
		return "", "", false, fmt.Errorf("%w: %q: want %sarn:aws:kms:REGION:ACCOUNT:key/ID or …:alias/NAME", ErrBadURI, kmsuri.Redact(uri), URIPrefix)
	}
	return rest, m[2], m[4] == "alias", nil
}

// KeyARN returns the ARN of the key (or alias) this AEAD uses.
func (a *AEAD) KeyARN() string { return a.arn }

// Describe names the key source for status and health output: the URI, nothing secret (the
// credentials and the endpoint stay with the SDK).
func (a *AEAD) Describe() string { return URIPrefix + a.arn }

// KeyVersion always returns "": AWS KMS rotation is transparent (see the package comment), so
// there is no version whose change should trigger a re-wrap. It exists so that callers that
// re-wrap on a version change can treat every KMS alike.
func (a *AEAD) KeyVersion(context.Context) (string, error) { return "", nil }

// encryptionContext is Tink's mapping of associated data onto KMS: none for empty associated data.
func (a *AEAD) encryptionContext(associatedData []byte) map[string]string {
	if len(associatedData) == 0 {
		return nil
	}
	return map[string]string{a.contextKey: hex.EncodeToString(associatedData)}
}

// Encrypt encrypts plaintext under the KMS key, binding associatedData as the encryption context.
func (a *AEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	out, err := a.client.Encrypt(ctx, &kms.EncryptInput{
		KeyId:             aws.String(a.arn),
		Plaintext:         plaintext,
		EncryptionContext: a.encryptionContext(associatedData),
	})
	if err != nil {
		return nil, a.wrap("Encrypt", err)
	}
	return out.CiphertextBlob, nil
}

// Decrypt decrypts ciphertext with the KMS key. It names the key in the request, so KMS refuses a
// ciphertext made under any other key instead of opening it with whichever key it names, and it
// checks the key KMS reports having used.
func (a *AEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	out, err := a.client.Decrypt(ctx, &kms.DecryptInput{
		KeyId:             aws.String(a.arn),
		CiphertextBlob:    ciphertext,
		EncryptionContext: a.encryptionContext(associatedData),
	})
	if err != nil {
		return nil, a.wrap("Decrypt", err)
	}
	// KMS answers with the key ARN even when asked by alias; compare only when we hold a key ARN.
	if !a.isAlias && aws.ToString(out.KeyId) != a.arn {
		return nil, &KMSError{KeyARN: a.arn, Op: "Decrypt", Code: "answer from another key"}
	}
	return out.Plaintext, nil
}

// wrap turns an SDK error into a KMSError (an answer refusing the request), an ErrUnreachable (no
// answer), or else (no usable credentials, a bad configuration) the SDK's error with the key and
// the operation. SDK errors carry the operation, the endpoint URL, the request id and where the
// credentials chain looked; never the credentials.
func (a *AEAD) wrap(op string, err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return &KMSError{KeyARN: a.arn, Op: op, Code: apiErr.ErrorCode()}
	}
	var sendErr *smithyhttp.RequestSendError
	if errors.As(err, &sendErr) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("aws-kms key %s: %s: %w: %w", a.arn, op, ErrUnreachable, err)
	}
	return fmt.Errorf("aws-kms key %s: %s: %w", a.arn, op, err)
}
