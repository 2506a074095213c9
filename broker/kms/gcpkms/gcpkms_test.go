package gcpkms_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/broker/kms/gcpkms"
	"github.com/credbroker/credbroker/broker/kms/gcpkms/gcpkmstest"
)

const (
	keyA = "projects/credbroker-test/locations/europe-west2/keyRings/brokerd/cryptoKeys/kek"
	keyB = "projects/credbroker-test/locations/europe-west2/keyRings/brokerd/cryptoKeys/other"
)

func TestParseURI(t *testing.T) {
	tests := []struct {
		name, uri string
		want      string // "" for an error
	}{
		{name: "key", uri: "gcp-kms://" + keyA, want: keyA},
		{name: "global location", uri: "gcp-kms://projects/p-1/locations/global/keyRings/r_1/cryptoKeys/k-1", want: "projects/p-1/locations/global/keyRings/r_1/cryptoKeys/k-1"},
		{name: "other scheme", uri: "aws-kms://" + keyA},
		{name: "key version", uri: "gcp-kms://" + keyA + "/cryptoKeyVersions/1"},
		{name: "key ring only", uri: "gcp-kms://projects/p/locations/l/keyRings/r"},
		{name: "path traversal", uri: "gcp-kms://projects/p/locations/l/keyRings/../cryptoKeys/k"},
		{name: "query", uri: "gcp-kms://" + keyA + "?x=1"},
		{name: "empty", uri: "gcp-kms://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := gcpkms.ParseURI(tc.uri)
			if tc.want == "" {
				if !errors.Is(err, gcpkms.ErrBadURI) {
					t.Fatalf("ParseURI(%q) = %q, %v; want ErrBadURI", tc.uri, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseURI(%q) = %q, %v; want %q", tc.uri, got, err, tc.want)
			}
		})
	}
}

// fake starts the fake Cloud KMS with keys A and B and points Application Default Credentials at
// its service account, so New goes through Google's real credentials chain and token exchange.
func fake(t *testing.T) *gcpkmstest.Server {
	t.Helper()
	f := gcpkmstest.Start(t)
	f.CreateKey(t, keyA)
	f.CreateKey(t, keyB)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", f.CredentialsFile(t))
	return f
}

func newAEAD(t *testing.T, f *gcpkmstest.Server, key string) *gcpkms.AEAD {
	t.Helper()
	a, err := gcpkms.NewWithOptions(context.Background(), "gcp-kms://"+key, gcpkms.WithEndpoint(f.URL))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAgainstFake(t *testing.T) {
	f := fake(t)
	a, b := newAEAD(t, f, keyA), newAEAD(t, f, keyB)
	plaintext := []byte("data keyset bytes")
	ad := []byte("credbroker/datakeyset")
	tests := []struct {
		name       string
		enc, dec   tink.AEAD
		encAD      []byte
		decAD      []byte
		wantStatus string // "" for success
	}{
		{name: "round trip", enc: a, dec: a, encAD: ad, decAD: ad},
		{name: "round trip, no associated data", enc: a, dec: a},
		{name: "wrong associated data", enc: a, dec: a, encAD: ad, decAD: []byte("credbroker/other"), wantStatus: "INVALID_ARGUMENT"},
		{name: "associated data dropped", enc: a, dec: a, encAD: ad, wantStatus: "INVALID_ARGUMENT"},
		{name: "ciphertext under another key", enc: b, dec: a, encAD: ad, decAD: ad, wantStatus: "INVALID_ARGUMENT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, err := tc.enc.Encrypt(plaintext, tc.encAD)
			if err != nil {
				t.Fatalf("Encrypt: %v", err)
			}
			got, err := tc.dec.Decrypt(ct, tc.decAD)
			if tc.wantStatus == "" {
				if err != nil || !bytes.Equal(got, plaintext) {
					t.Fatalf("Decrypt = %q, %v; want %q", got, err, plaintext)
				}
				return
			}
			var kerr *gcpkms.KMSError
			if !errors.As(err, &kerr) || kerr.Status != tc.wantStatus || kerr.Op != "Decrypt" {
				t.Fatalf("Decrypt error = %v (plaintext %q), want a KMSError %s", err, got, tc.wantStatus)
			}
			if !strings.Contains(err.Error(), keyA) {
				t.Fatalf("error %q does not name the key", err)
			}
		})
	}
	if f.Requests("token") == 0 {
		t.Fatal("no access token was fetched: the credentials chain was not used")
	}
}

func TestWrapsATinkKeyset(t *testing.T) {
	f := fake(t)
	kek := newAEAD(t, f, keyA)
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, []byte("datakeyset")); err != nil {
		t.Fatal(err)
	}
	if _, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), kek, []byte("other")); err == nil {
		t.Fatal("keyset opened with the wrong associated data")
	}
	if _, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(buf.Bytes())), kek, []byte("datakeyset")); err != nil {
		t.Fatal(err)
	}
}

func TestRotation(t *testing.T) {
	f := fake(t)
	a := newAEAD(t, f, keyA)
	ctx := context.Background()
	v1, err := a.KeyVersion(ctx)
	if err != nil || v1 != keyA+"/cryptoKeyVersions/1" {
		t.Fatalf("KeyVersion = %q, %v", v1, err)
	}
	old, err := a.Encrypt([]byte("before"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	f.Rotate(t, keyA)
	v2, err := a.KeyVersion(ctx)
	if err != nil || v2 != keyA+"/cryptoKeyVersions/2" {
		t.Fatalf("after rotation KeyVersion = %q, %v; want version 2", v2, err)
	}
	if pt, err := a.Decrypt(old, []byte("ad")); err != nil || string(pt) != "before" {
		t.Fatalf("old ciphertext after rotation: %q, %v", pt, err)
	}
	ct, err := a.Encrypt([]byte("after"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := a.Decrypt(ct, []byte("ad")); err != nil || string(pt) != "after" {
		t.Fatalf("new ciphertext: %q, %v", pt, err)
	}
}

func TestErrors(t *testing.T) {
	f := fake(t)
	a := newAEAD(t, f, keyA)
	ct, err := a.Encrypt([]byte("secret-plaintext"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("KMS down", func(t *testing.T) {
		f.SetDown(true)
		defer f.SetDown(false)
		for name, call := range map[string]func() error{
			"Encrypt": func() error { _, err := a.Encrypt([]byte("secret-plaintext"), []byte("ad")); return err },
			"Decrypt": func() error { _, err := a.Decrypt(ct, []byte("ad")); return err },
		} {
			err := call()
			if !errors.Is(err, gcpkms.ErrUnreachable) || !strings.Contains(err.Error(), keyA) || !strings.Contains(err.Error(), name) {
				t.Fatalf("%s with KMS down: %v; want ErrUnreachable naming the key and the operation", name, err)
			}
			if strings.Contains(err.Error(), "secret-plaintext") {
				t.Fatalf("error leaks the plaintext: %v", err)
			}
			t.Logf("%s with KMS down: %v", name, err)
		}
	})

	t.Run("unknown key", func(t *testing.T) {
		missing := "projects/credbroker-test/locations/europe-west2/keyRings/brokerd/cryptoKeys/missing"
		_, err := newAEAD(t, f, missing).Encrypt([]byte("x"), nil)
		var kerr *gcpkms.KMSError
		if !errors.As(err, &kerr) || kerr.Status != "PERMISSION_DENIED" || kerr.HTTPStatus != http.StatusForbidden || !strings.Contains(err.Error(), missing) {
			t.Fatalf("Encrypt on a missing key: %v", err)
		}
	})

	t.Run("no credentials", func(t *testing.T) {
		c, err := gcpkms.NewWithOptions(context.Background(), "gcp-kms://"+keyA, gcpkms.WithEndpoint(f.URL), gcpkms.WithHTTPClient(http.DefaultClient))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Encrypt([]byte("x"), nil)
		var kerr *gcpkms.KMSError
		if !errors.As(err, &kerr) || kerr.Status != "UNAUTHENTICATED" {
			t.Fatalf("Encrypt with no token: %v; want UNAUTHENTICATED", err)
		}
	})

	t.Run("credentials file missing", func(t *testing.T) {
		t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", t.TempDir()+"/missing.json")
		_, err := gcpkms.New(context.Background(), "gcp-kms://"+keyA)
		if err == nil || !strings.Contains(err.Error(), keyA) || !strings.Contains(err.Error(), "Application Default Credentials") {
			t.Fatalf("New with a missing credentials file: %v", err)
		}
	})

	t.Run("token refused", func(t *testing.T) {
		t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", f.UntrustedCredentialsFile(t))
		_, err := newAEAD(t, f, keyA).Encrypt([]byte("x"), nil)
		if err == nil || !strings.Contains(err.Error(), "access token was refused: HTTP 400, invalid_grant") || !strings.Contains(err.Error(), keyA) {
			t.Fatalf("Encrypt with a refused token grant: %v", err)
		}
		// The token endpoint's body stays out of the error.
		if strings.Contains(err.Error(), "refused by the fake") {
			t.Fatalf("error carries the token endpoint's body: %v", err)
		}
	})
}

// A redirect from the endpoint is not followed: oauth2's transport would add the bearer token to
// the redirected request, handing it to another host. The 3xx is a refusal, and the other host
// hears nothing.
func TestRedirectNotFollowed(t *testing.T) {
	f := fake(t)
	var bearers atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			bearers.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{}`)
	}))
	t.Cleanup(elsewhere.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(elsewhere.URL, "http://"))
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://localhost:"+port+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	a, err := gcpkms.NewWithOptions(context.Background(), "gcp-kms://"+keyA, gcpkms.WithEndpoint(redirector.URL))
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Decrypt([]byte("ct"), []byte("ad"))
	var kerr *gcpkms.KMSError
	if !errors.As(err, &kerr) || kerr.HTTPStatus != http.StatusTemporaryRedirect {
		t.Fatalf("decrypt through a redirect: %v, want a KMSError with HTTP 307", err)
	}
	if n := bearers.Load(); n != 0 {
		t.Fatalf("the bearer token was sent to the redirect's target %d time(s)", n)
	}
	if f.Requests("token") == 0 {
		t.Fatal("no access token was fetched: the credentials chain was not used")
	}
}
