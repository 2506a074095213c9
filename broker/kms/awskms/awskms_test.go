package awskms_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/broker/kms/awskms"
	"github.com/credbroker/credbroker/broker/kms/awskms/localkmstest"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		name, uri           string
		wantARN, wantRegion string
		wantAlias           bool
		wantErr             bool
	}{
		{name: "key", uri: "aws-kms://arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			wantARN: "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", wantRegion: "eu-west-2"},
		{name: "alias", uri: "aws-kms://arn:aws:kms:us-east-1:111122223333:alias/credbroker/kek",
			wantARN: "arn:aws:kms:us-east-1:111122223333:alias/credbroker/kek", wantRegion: "us-east-1", wantAlias: true},
		{name: "other partition", uri: "aws-kms://arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/abc",
			wantARN: "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/abc", wantRegion: "us-gov-west-1"},
		{name: "other scheme", uri: "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k", wantErr: true},
		{name: "bare key id", uri: "aws-kms://1234abcd-12ab-34cd-56ef-1234567890ab", wantErr: true},
		{name: "not kms", uri: "aws-kms://arn:aws:s3:eu-west-2:111122223333:key/abc", wantErr: true},
		{name: "no region", uri: "aws-kms://arn:aws:kms::111122223333:key/abc", wantErr: true},
		{name: "short account", uri: "aws-kms://arn:aws:kms:eu-west-2:1111:key/abc", wantErr: true},
		{name: "empty id", uri: "aws-kms://arn:aws:kms:eu-west-2:111122223333:key/", wantErr: true},
		{name: "trailing space", uri: "aws-kms://arn:aws:kms:eu-west-2:111122223333:key/abc ", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			arn, region, isAlias, err := awskms.ParseURI(tc.uri)
			if tc.wantErr {
				if !errors.Is(err, awskms.ErrBadURI) {
					t.Fatalf("ParseURI(%q) error = %v, want ErrBadURI", tc.uri, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tc.uri, err)
			}
			if arn != tc.wantARN || region != tc.wantRegion || isAlias != tc.wantAlias {
				t.Fatalf("ParseURI(%q) = %q, %q, %v; want %q, %q, %v", tc.uri, arn, region, isAlias, tc.wantARN, tc.wantRegion, tc.wantAlias)
			}
		})
	}
}

// emulator starts local-kms, points this process's AWS SDK default chain at it and creates a key.
func emulator(t *testing.T, opts localkmstest.Options) (*localkmstest.Server, string) {
	t.Helper()
	srv := localkmstest.Start(t, opts)
	srv.SetEnv(t)
	// One attempt: the unreachable-KMS case is then one refused connection, not three with backoff.
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	return srv, srv.CreateKey(t)
}

func newAEAD(t *testing.T, uri string) tink.AEAD {
	t.Helper()
	a, err := awskms.New(context.Background(), uri)
	if err != nil {
		t.Fatalf("New(%q): %v", uri, err)
	}
	return a
}

func TestAgainstLocalKMS(t *testing.T) {
	srv, keyA := emulator(t, localkmstest.Options{})
	keyB := srv.CreateKey(t)
	ctx := context.Background()
	aliasARN := "arn:aws:kms:" + localkmstest.Region + ":" + localkmstest.AccountID + ":alias/credbroker-kek"
	if _, err := srv.Client().CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/credbroker-kek"), TargetKeyId: aws.String(keyA)}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	a := newAEAD(t, localkmstest.KeyURI(keyA))
	b := newAEAD(t, localkmstest.KeyURI(keyB))
	alias := newAEAD(t, localkmstest.KeyURI(aliasARN))
	plaintext := []byte("data keyset bytes")
	ad := []byte("credbroker/datakeyset")

	tests := []struct {
		name     string
		enc, dec tink.AEAD
		encAD    []byte
		decAD    []byte
		wantCode string // "" for success
	}{
		{name: "round trip", enc: a, dec: a, encAD: ad, decAD: ad},
		{name: "round trip, no associated data", enc: a, dec: a},
		{name: "alias encrypts, key decrypts", enc: alias, dec: a, encAD: ad, decAD: ad},
		{name: "key encrypts, alias decrypts", enc: a, dec: alias, encAD: ad, decAD: ad},
		{name: "wrong associated data", enc: a, dec: a, encAD: ad, decAD: []byte("credbroker/other"), wantCode: "InvalidCiphertextException"},
		{name: "associated data dropped", enc: a, dec: a, encAD: ad, wantCode: "InvalidCiphertextException"},
		{name: "associated data added", enc: a, dec: a, decAD: ad, wantCode: "InvalidCiphertextException"},
		{name: "ciphertext under another key", enc: b, dec: a, encAD: ad, decAD: ad, wantCode: "InvalidCiphertextException"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, err := tc.enc.Encrypt(plaintext, tc.encAD)
			if err != nil {
				t.Fatalf("Encrypt: %v", err)
			}
			if bytes.Contains(ct, plaintext) {
				t.Fatal("ciphertext contains the plaintext")
			}
			got, err := tc.dec.Decrypt(ct, tc.decAD)
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("Decrypt: %v", err)
				}
				if !bytes.Equal(got, plaintext) {
					t.Fatalf("Decrypt = %q, want %q", got, plaintext)
				}
				return
			}
			var kerr *awskms.KMSError
			if !errors.As(err, &kerr) || kerr.Code != tc.wantCode || kerr.Op != "Decrypt" {
				t.Fatalf("Decrypt error = %v (plaintext %q), want a KMSError %s", err, got, tc.wantCode)
			}
			if !strings.Contains(err.Error(), kerr.KeyARN) || !strings.HasPrefix(kerr.KeyARN, "arn:aws:kms:") {
				t.Fatalf("error %q does not name the key ARN", err)
			}
		})
	}
}

// The associated data is carried the way tink-go-awskms carries it, so ciphertexts interoperate:
// a plain KMS Decrypt with EncryptionContext {NAME: hex(ad)} opens ours, NAME being
// "associatedData" by default (tink-go-awskms NewClientWithOptions) and "additionalData" with
// WithLegacyAdditionalData (its deprecated NewClient).
func TestEncryptionContextIsTinkCompatible(t *testing.T) {
	srv, key := emulator(t, localkmstest.Options{})
	ad := []byte{0x00, 0xff, 'c', 'b'}
	tests := []struct {
		name, contextKey string
		opts             []awskms.Option
	}{
		{name: "default", contextKey: "associatedData"},
		{name: "legacy", contextKey: "additionalData", opts: []awskms.Option{awskms.WithLegacyAdditionalData()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := awskms.NewWithOptions(context.Background(), localkmstest.KeyURI(key), tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			ct, err := a.Encrypt([]byte("kek-wrapped"), ad)
			if err != nil {
				t.Fatal(err)
			}
			out, err := srv.Client().Decrypt(context.Background(), &kms.DecryptInput{
				KeyId:             aws.String(key),
				CiphertextBlob:    ct,
				EncryptionContext: map[string]string{tc.contextKey: hex.EncodeToString(ad)},
			})
			if err != nil {
				t.Fatalf("KMS Decrypt with Tink's encryption context %q: %v", tc.contextKey, err)
			}
			if string(out.Plaintext) != "kek-wrapped" {
				t.Fatalf("plaintext = %q", out.Plaintext)
			}
		})
	}
}

// The way the store uses a KEK: a Tink data keyset written encrypted under the KMS AEAD, with
// associated data, and read back; a wrong associated data must not open it.
func TestWrapsATinkKeyset(t *testing.T) {
	_, key := emulator(t, localkmstest.Options{})
	kek := newAEAD(t, localkmstest.KeyURI(key))
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, []byte("datakeyset")); err != nil {
		t.Fatalf("writing the keyset under the KMS key: %v", err)
	}
	wrapped := buf.Bytes()
	if _, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(wrapped)), kek, []byte("other")); err == nil {
		t.Fatal("keyset opened with the wrong associated data")
	}
	h2, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(wrapped)), kek, []byte("datakeyset"))
	if err != nil {
		t.Fatalf("reading the keyset back: %v", err)
	}
	if h2.KeysetInfo().GetPrimaryKeyId() != h.KeysetInfo().GetPrimaryKeyId() {
		t.Fatal("read back a different keyset")
	}
}

// A KMS outage is a clear error (naming the key ARN and the operation, no secret), and when the
// KMS comes back at the same endpoint the same AEAD works again: nothing to rebuild.
func TestKMSDownIsAClearError(t *testing.T) {
	srv, key := emulator(t, localkmstest.Options{})
	a := newAEAD(t, localkmstest.KeyURI(key))
	ct, err := a.Encrypt([]byte("secret-plaintext"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	secret := ""
	for _, kv := range srv.Env() {
		if v, ok := strings.CutPrefix(kv, "AWS_SECRET_ACCESS_KEY="); ok {
			secret = v
		}
	}
	for name, call := range map[string]func() error{
		"Encrypt": func() error { _, err := a.Encrypt([]byte("secret-plaintext"), []byte("ad")); return err },
		"Decrypt": func() error { _, err := a.Decrypt(ct, []byte("ad")); return err },
	} {
		t.Run(name, func(t *testing.T) {
			err := call()
			if !errors.Is(err, awskms.ErrUnreachable) {
				t.Fatalf("%s with the emulator down: error = %v, want ErrUnreachable", name, err)
			}
			msg := err.Error()
			t.Logf("%s with KMS down: %s", name, msg)
			if !strings.Contains(msg, key) || !strings.Contains(msg, name) {
				t.Fatalf("error %q does not name the key ARN and the operation", msg)
			}
			for _, leak := range []string{secret, "secret-plaintext"} {
				if strings.Contains(msg, leak) {
					t.Fatalf("error %q leaks %q", msg, leak)
				}
			}
		})
	}
	srv.Restart(t)
	if pt, err := a.Decrypt(ct, []byte("ad")); err != nil || string(pt) != "secret-plaintext" {
		t.Fatalf("after the KMS came back: Decrypt = %q, %v", pt, err)
	}
}

// With no credentials anywhere in the chain the error says so (and is not "unreachable": the
// operator's fix is credentials, not the network).
func TestNoCredentials(t *testing.T) {
	_, key := emulator(t, localkmstest.Options{})
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err := newAEAD(t, localkmstest.KeyURI(key)).Encrypt([]byte("x"), nil)
	if err == nil || errors.Is(err, awskms.ErrUnreachable) || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "get credentials") {
		t.Fatalf("Encrypt with no credentials: %v; want an error naming the key and the credentials", err)
	}
}

// After a rotation, ciphertexts made under the old backing key still open, and new ones are made
// under the new key. local-kms has no RotateKeyOnDemand, and EnableKeyRotation schedules the next
// rotation a year out; its own rotation code runs when a key's NextKeyRotation has passed, so the
// "after" emulator is seeded with the same key and a NextKeyRotation in the past.
func TestRotationKeepsOldCiphertexts(t *testing.T) {
	const keyID = "0b7a1d0e-6a4f-4c55-9d1e-3f2a8c7b5e10"
	const seed = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + keyID + `
        BackingKeys:
          - 5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9
`
	before := localkmstest.Start(t, localkmstest.Options{Seed: seed})
	after := localkmstest.Start(t, localkmstest.Options{Seed: seed + "        NextKeyRotation: 2001-01-01T00:00:00Z\n"})
	uri := localkmstest.KeyURI("arn:aws:kms:" + localkmstest.Region + ":" + localkmstest.AccountID + ":key/" + keyID)
	t.Setenv("AWS_MAX_ATTEMPTS", "1")
	// aeadOn points the SDK's default chain at one emulator and opens the key there.
	aeadOn := func(s *localkmstest.Server) tink.AEAD { s.SetEnv(t); return newAEAD(t, uri) }
	old, rotated := aeadOn(before), aeadOn(after)

	ad := []byte("datakeyset")
	oldCT, err := old.Encrypt([]byte("wrapped before"), ad)
	if err != nil {
		t.Fatal(err)
	}
	newCT, err := rotated.Encrypt([]byte("wrapped after"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := rotated.Decrypt(oldCT, ad); err != nil || string(pt) != "wrapped before" {
		t.Fatalf("rotated key, old ciphertext: %q, %v", pt, err)
	}
	if pt, err := rotated.Decrypt(newCT, ad); err != nil || string(pt) != "wrapped after" {
		t.Fatalf("rotated key, new ciphertext: %q, %v", pt, err)
	}
	// The un-rotated key lacks the new backing key: proof that the rotation took place.
	var kerr *awskms.KMSError
	if _, err := old.Decrypt(newCT, ad); !errors.As(err, &kerr) {
		t.Fatalf("un-rotated key opened a ciphertext made after the rotation (err %v)", err)
	}
}
