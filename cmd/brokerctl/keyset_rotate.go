package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/store"
)

func newKeysetRotateCmd(a *app) *cobra.Command {
	var in, out string
	cmd := &cobra.Command{
		Use:   "rotate --in FILE --out NEWFILE",
		Short: "Write a copy of a master keyset with a new primary key (mode 0600; never overwrites)",
		Long: `Read the master keyset FILE, add a new AES-256-GCM key, make it the primary and write the
result to NEWFILE (mode 0600). NEWFILE keeps the old key, so it still opens the database. Put it
where brokerd reads its keyset and send SIGHUP (systemctl reload credbroker): brokerd re-wraps the
database's keysets under the new primary. After that the new key alone opens the database.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := store.RotateMasterKeyset(in, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "wrote rotated master keyset to %s (new primary key id %d)\n", out, id)
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "current master keyset (required)")
	cmd.Flags().StringVar(&out, "out", "", "file to create (required)")
	cmd.MarkFlagRequired("in")
	cmd.MarkFlagRequired("out")
	return cmd
}
