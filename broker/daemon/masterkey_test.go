package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/store"
)

// A failed re-wrap is the KMS's doing unless the database says otherwise; in particular a commit
// of unknown outcome stays ErrOutcomeUnknown (OUTCOME_UNKNOWN), never "KMS unavailable, nothing
// was changed", which a re-wrap that may have landed would contradict.
func TestKMSErrKeepsDatabaseOutcomes(t *testing.T) {
	for _, tc := range []struct {
		err     error
		wantKMS bool
	}{
		{errors.New("kms: connection refused"), true},
		{fmt.Errorf("re-wrap: %w: may now be under the new master key", store.ErrOutcomeUnknown), false},
		{store.ErrSyncFailed, false},
		{fmt.Errorf("x: %w", store.ErrCorrupt), false},
	} {
		got := kmsErr(tc.err)
		if errors.Is(got, broker.ErrKMSUnavailable) != tc.wantKMS || !tc.wantKMS && !errors.Is(got, tc.err) {
			t.Errorf("kmsErr(%v) = %v; want KMS unavailable: %v", tc.err, got, tc.wantKMS)
		}
	}
}

// keyset migrate opens the target KMS once and still tells the operator's mistakes (a bad URI, no
// Vault token: INVALID_ARGUMENT) from a KMS that fails (KMS_UNAVAILABLE); either way the
// database stays under the key it was under.
func TestMigrateClassifiesTargetErrors(t *testing.T) {
	dir := t.TempDir()
	keysetPath := filepath.Join(dir, "master.json")
	if err := store.NewMasterKeyset(keysetPath); err != nil {
		t.Fatal(err)
	}
	cur, err := kms.OpenFile(keysetPath)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := store.Open(filepath.Join(dir, "broker.db"), cur.AEAD, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	m := &masterKey{st: st2, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m.cur.Store(cur)

	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte("s.test"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A loopback port nothing listens on: the KMS is down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		name, to, tokenFile string
		want                error
	}{
		{"bad URI", "hcvault://" + down + "/transit/k", tokenFile, broker.ErrInvalidArgument},
		{"no Vault token", "hcvault://" + down + "/transit/keys/k", "", broker.ErrInvalidArgument},
		{"KMS down", "hcvault://" + down + "/transit/keys/k", tokenFile, broker.ErrKMSUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", "http://"+down)
			t.Setenv("VAULT_TOKEN_FILE", tc.tokenFile)
			t.Setenv("VAULT_TOKEN", "")
			t.Setenv("VAULT_MAX_RETRIES", "0")
			t.Setenv("CREDENTIALS_DIRECTORY", "")
			_, err := m.MigrateMasterKey(context.Background(), tc.to)
			if !errors.Is(err, tc.want) {
				t.Fatalf("migrate --to %s: %v, want %v", tc.to, err, tc.want)
			}
			if m.cur.Load() != cur || st2.KEKSource() != store.KEKSourceFile {
				t.Fatal("a refused migrate changed the master key")
			}
		})
	}
}
