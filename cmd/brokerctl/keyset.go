package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/store"
)

func newKeysetCmd(a *app) *cobra.Command {
	var out string
	newCmd := &cobra.Command{
		Use:   "new --out FILE",
		Short: "Write a new master keyset (mode 0600; never overwrites)",
		Long: `Write a new AES-256-GCM master keyset to FILE with mode 0600. brokerd reads it with
--master-keyset (or as a systemd credential). An existing FILE is never overwritten: losing the
master keyset loses every stored credential, so back it up somewhere safe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := store.NewMasterKeyset(out); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "wrote master keyset to %s\n", out)
			return nil
		},
	}
	newCmd.Flags().StringVar(&out, "out", "", "file to create (required)")
	newCmd.MarkFlagRequired("out")
	return groupCmd("keyset", "Manage the master keyset", newCmd, newKeysetRotateCmd(a), newKeysetPruneCmd(a),
		newKeysetRewrapCmd(a), newKeysetMigrateCmd(a)) // keyset_kms.go
}
