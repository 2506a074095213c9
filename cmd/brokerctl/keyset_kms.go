package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// masterKeyAPI is what `keyset rewrap` and `keyset migrate` need; *client.Client has it.
type masterKeyAPI interface {
	RewrapMasterKey(ctx context.Context) (*credbrokerv1.RewrapMasterKeyResponse, error)
	MigrateMasterKey(ctx context.Context, to string) (*credbrokerv1.MigrateMasterKeyResponse, error)
}

func (a *app) callMasterKey(cmd *cobra.Command, fn func(context.Context, masterKeyAPI) error) error {
	return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
		m, ok := c.(masterKeyAPI)
		if !ok {
			return errors.New("internal error: this client cannot make master key calls")
		}
		return fn(ctx, m)
	})
}

func newKeysetRewrapCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rewrap",
		Short: "Ask brokerd to re-wrap its database under the master key's current version (after a KMS key rotation)",
		Long: `Ask the running brokerd to re-wrap the keysets stored in its database under the current
version of its master key, in one transaction verified before it commits. Needed after rotating the
key in the KMS (Vault Transit: ` + "`bao write -f transit/keys/NAME/rotate`" + `), whose ciphertexts carry
no Tink key id; brokerd also does it by itself at start and on SIGHUP. AWS KMS and Cloud KMS
rotate transparently (old ciphertexts still open); this re-encrypts under the current key material.
With a keyset file it re-wraps under the keyset's primary. Admin only; audited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.callMasterKey(cmd, func(ctx context.Context, m masterKeyAPI) error {
				res, err := m.RewrapMasterKey(ctx)
				if err != nil {
					return err
				}
				if v := res.GetKeyVersion(); v != "" {
					fmt.Fprintf(a.stdout, "re-wrapped under %s, key version %s (was %s)\n", res.GetSource(), v, orDash(strings.Join(res.GetPreviousKeyVersions(), ",")))
				} else if prev := res.GetPreviousKeyVersions(); res.GetRewrapped() && len(prev) > 0 {
					fmt.Fprintf(a.stdout, "re-wrapped under the primary key of %s (was under master key ids %s)\n", res.GetSource(), strings.Join(prev, ","))
				} else if res.GetRewrapped() {
					// AWS KMS, Cloud KMS: a ciphertext names no key version brokerd can read.
					fmt.Fprintf(a.stdout, "re-wrapped under the current key material of %s\n", res.GetSource())
				} else {
					fmt.Fprintf(a.stdout, "already wrapped under the primary key of %s; nothing to do\n", res.GetSource())
				}
				return nil
			})
		},
	}
}

func newKeysetMigrateCmd(a *app) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "migrate --to URI|FILE",
		Short: "Move brokerd's database to another master key: a KMS key URI or a keyset file",
		Long: `Ask the running brokerd to move its database from the master key it runs with to another,
named by --to as one of (the forms brokerd's --master-key-uri and --master-keyset take):

  hcvault://HOST[:PORT]/MOUNT/keys/NAME                      Vault / OpenBao Transit
  aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID                AWS KMS (or …:alias/NAME)
  gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K   Google Cloud KMS
  /PATH/TO/master-keyset.json                                a master keyset file (from ` + "`keyset new`" + `;
                                                             a relative path is made absolute here)

brokerd opens the target itself, with its own environment (VAULT_ADDR, VAULT_TOKEN_FILE; the AWS
SDK's settings; Application Default Credentials) and file permissions, self-tests a KMS,
re-wraps the database's keysets in one transaction verified by unwrapping under the new key
before it commits, and uses the new key from then on. Calls are served throughout. If it is
interrupted, nothing is half-done: run it again. Then restart brokerd with the flag it prints
(--master-key-uri or --master-keyset): started with the old one it refuses, naming the key the
database is under. Admin only; audited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			target := to
			if !strings.Contains(to, "://") {
				abs, err := filepath.Abs(to)
				if err != nil {
					return fmt.Errorf("--to %s: %w", to, err)
				}
				target = abs
			}
			return a.callMasterKey(cmd, func(ctx context.Context, m masterKeyAPI) error {
				res, err := m.MigrateMasterKey(ctx, target)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "migrated the database from %s to %s", res.GetFrom(), res.GetTo())
				if v := res.GetKeyVersion(); v != "" {
					fmt.Fprintf(a.stdout, " (key version %s)", v)
				}
				fmt.Fprintf(a.stdout, "\nrestart brokerd with %s from now on\n", res.GetRestartFlag())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "KMS key URI (hcvault://, aws-kms://, gcp-kms://) or master keyset file to move to (required)")
	cmd.MarkFlagRequired("to")
	return cmd
}
