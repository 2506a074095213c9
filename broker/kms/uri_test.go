package kms

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Every error that names a bad key URI, whatever its scheme, names it with the user info, query
// and fragment redacted: an operator's `user:pass@` typo or a token in a query must not reach a log.
func TestBadURIErrorsRedactSecrets(t *testing.T) {
	const arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	const gcpKey = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
	for _, tc := range []struct{ name, uri, want string }{
		{"aws: user info", "aws-kms://AKIAX:s3cret@" + arn, "aws-kms://REDACTED@" + arn},
		{"aws: query", "aws-kms://" + arn + "?secret=s3cret", "aws-kms://" + arn + "?REDACTED"},
		{"aws: fragment", "aws-kms://" + arn + "#s3cret", "aws-kms://" + arn + "#REDACTED"},
		{"aws: password with a slash", "aws-kms://u:s3/cret@" + arn, "aws-kms://REDACTED@" + arn},
		{"gcp: user info", "gcp-kms://u:s3cret@" + gcpKey, "gcp-kms://REDACTED@" + gcpKey},
		{"gcp: query", "gcp-kms://" + gcpKey + "?access_token=s3cret", "gcp-kms://" + gcpKey + "?REDACTED"},
		{"hcvault: user info", "hcvault://u:s3cret@127.0.0.1:8200/transit/keys/k", "hcvault://REDACTED@127.0.0.1:8200/transit/keys/k"},
		{"hcvault: query", "hcvault://127.0.0.1:8200/transit/keys/k?token=s3cret", "hcvault://127.0.0.1:8200/transit/keys/k?REDACTED"},
		{"hcvault: unparsable", "hcvault://u:s3cret%zz@127.0.0.1:8200/transit/keys/k", "hcvault://REDACTED@127.0.0.1:8200/transit/keys/k"},
		{"unknown scheme", "s3://u:s3cret@bucket/k", "s3://REDACTED@bucket/k"},
		{"no scheme", "u:s3cret@transit/keys/k", "REDACTED@transit/keys/k"},
		{"before the ://", "u:s3cret@x://host/k", "REDACTED@x://host/k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", "")
			t.Setenv("VAULT_TOKEN_FILE", "")
			t.Setenv("VAULT_TOKEN", "")
			t.Setenv("CREDENTIALS_DIRECTORY", "")
			_, err := Backend(context.Background(), tc.uri)
			if err == nil {
				t.Fatal("a bad URI was accepted")
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error quotes the URI's secret: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the URI as %q", err, tc.want)
			}
		})
	}
}

// countingOpener is a KMS backend for a test scheme: it counts how often it is opened and opens
// to aead or fails with err.
type countingOpener struct {
	n    int
	aead tink.AEAD
	err  error
}

func (c *countingOpener) open(context.Context, string) (tink.AEAD, error) {
	c.n++
	return c.aead, c.err
}

// noAAD is a KMS that ignores the associated data: it fails the self-test.
type noAAD struct{}

func (noAAD) Encrypt(pt, _ []byte) ([]byte, error) { return append([]byte("ct:"), pt...), nil }
func (noAAD) Decrypt(ct, _ []byte) ([]byte, error) {
	return bytes.TrimPrefix(ct, []byte("ct:")), nil
}

// Open opens the backend once (the migrate used to open it a second time to tell a bad URI from a
// KMS failure) and says which it was: an error from before any KMS call is ErrSetup, message
// unchanged; a self-test failure is not.
func TestOpenOpensTheBackendOnce(t *testing.T) {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	good, err := aead.New(h)
	if err != nil {
		t.Fatal(err)
	}
	errNoToken := errors.New("--master-key-uri test-kms://k: no token")
	for _, tc := range []struct {
		name      string
		opener    *countingOpener
		wantErr   bool
		wantSetup bool
	}{
		{"setup fails", &countingOpener{err: errNoToken}, true, true},
		{"self-test fails", &countingOpener{aead: noAAD{}}, true, false},
		{"opens", &countingOpener{aead: good}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := backends
			t.Cleanup(func() { backends = saved })
			backends = append(slices.Clone(saved), backendKind{"test-kms", "test-kms://NAME", tc.opener.open})
			k, err := Open(context.Background(), "test-kms://k")
			if (err != nil) != tc.wantErr || errors.Is(err, ErrSetup) != tc.wantSetup {
				t.Fatalf("Open: %v; want error %v, ErrSetup %v", err, tc.wantErr, tc.wantSetup)
			}
			if tc.wantSetup && err.Error() != errNoToken.Error() {
				t.Fatalf("ErrSetup changed the message: %q", err)
			}
			if !tc.wantErr && k == nil {
				t.Fatal("no KEK")
			}
			if tc.opener.n != 1 {
				t.Fatalf("the backend was opened %d times, want once", tc.opener.n)
			}
		})
	}
}
