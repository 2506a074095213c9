package broker

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
	"github.com/credbroker/credbroker/store/storetest"
)

func TestCredentialWarnings(t *testing.T) {
	missing := func(tool string) string {
		return "tool " + tool + ": credential scavio_api_key is not stored; its calls fail until `brokerctl credential put scavio_api_key`"
	}
	unused := func(name string) string {
		return "credential " + name + " is used by no tool (the tools spend scavio_api_key); put the key under that name, and `brokerctl credential delete " + name + "` if it was a mistake"
	}
	for _, tc := range []struct {
		name   string
		stored []string
		want   []string
	}{
		{"nothing stored", nil, []string{missing("web_search"), missing("google_search")}},
		{"the right name", []string{"scavio_api_key"}, nil},
		{"the help's old example name", []string{"scavio"}, []string{missing("web_search"), missing("google_search"), unused("scavio")}},
		{"right name and a stray one", []string{"other", "scavio_api_key"}, []string{unused("other")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := credentialWarnings(tc.stored); !slices.Equal(got, tc.want) {
				t.Errorf("credentialWarnings(%q) =\n%q\nwant\n%q", tc.stored, got, tc.want)
			}
		})
	}
}

// Status carries the warnings, and they follow what is stored.
func TestStatusCredentialWarnings(t *testing.T) {
	st := storetest.Open(t, t.TempDir(), store.Options{})
	t.Cleanup(func() { st.Close() })
	up, err := upstream.New(upstream.Config{BaseURL: "http://127.0.0.1:1", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Store: st, Upstream: up, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	warnings := func() string {
		t.Helper()
		s, err := b.Status()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(s.Warnings, "\n")
	}
	if w := warnings(); !strings.Contains(w, "tool web_search: credential scavio_api_key is not stored") || !strings.Contains(w, "tool google_search:") {
		t.Fatalf("fresh broker: warnings %q do not name the missing credential", w)
	}
	if _, err := b.PutCredential(context.Background(), "scavio", []byte("sk_test_x")); err != nil {
		t.Fatal(err)
	}
	if w := warnings(); !strings.Contains(w, "credential scavio is used by no tool") || !strings.Contains(w, "tool web_search: credential scavio_api_key is not stored") {
		t.Fatalf("after put scavio: warnings %q", w)
	}
	if _, err := b.PutCredential(context.Background(), "scavio_api_key", []byte("sk_test_x")); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteCredential(context.Background(), "scavio"); err != nil {
		t.Fatal(err)
	}
	if w := warnings(); w != "" {
		t.Fatalf("with scavio_api_key stored: warnings %q, want none", w)
	}
}
