package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/credbroker/credbroker/store"
)

func newKeysetPruneCmd(a *app) *cobra.Command {
	var in, out, db string
	cmd := &cobra.Command{
		Use:   "prune --in FILE --out NEWFILE [--db DB]",
		Short: "Write a copy of a master keyset without the old keys, once no database needs them",
		Long: `Write to NEWFILE (mode 0600) the master keyset FILE with only its primary key. It refuses
while the database is still wrapped under another key: after ` + "`keyset rotate`" + `, start or reload
brokerd with the rotated keyset first, so it re-wraps the database under the new primary.

Which keys the database needs is read from --db (offline: brokerd must be stopped, and NEWFILE is
checked to open it) or, without --db, from the running brokerd (` + "`status`" + `).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var (
				inUse []uint32
				check func(tink.AEAD) error
			)
			if db != "" {
				u, err := store.InspectKeys(db)
				if errors.Is(err, store.ErrLocked) {
					return fmt.Errorf("%w; stop brokerd, or leave out --db to ask the running brokerd", err)
				}
				if err != nil {
					return err
				}
				inUse = u.MasterKeyIDs
				check = func(kek tink.AEAD) error {
					if !u.OpensWith(kek) {
						return fmt.Errorf("%w: the pruned keyset would not open %s; nothing was written", store.ErrKeyInUse, db)
					}
					return nil
				}
			} else {
				if err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
					st, err := c.Status(ctx)
					if err != nil {
						return err
					}
					inUse = st.GetMasterKeyIds()
					return nil
				}); err != nil {
					return fmt.Errorf("%w (or pass --db with brokerd stopped)", err)
				}
			}
			removed, err := store.PruneMasterKeyset(in, out, inUse, check)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "wrote pruned master keyset to %s (removed key ids %s); install it in place of %s and keep a backup until brokerd has restarted with it\n",
				out, joinIDs(removed), in)
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "current master keyset (required)")
	cmd.Flags().StringVar(&out, "out", "", "file to create (required)")
	cmd.Flags().StringVar(&db, "db", "", "database to check offline (default: ask the running brokerd)")
	cmd.MarkFlagRequired("in")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newRekeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rekey",
		Short: "Rotate the data keyset: a new data key, every stored version re-encrypted under it",
		Long: `Ask brokerd to rotate its data keyset: add a new primary data key, re-encrypt every stored
credential version under it (each version atomically, while calls keep being served), then delete
the old data keys. If it is interrupted (brokerd killed, disk full), nothing is lost: run it again
and it finishes the same rotation. ` + "`status`" + ` shows the data keys in use.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.callRotation(cmd, func(ctx context.Context, r rotationAPI) error {
				res, err := r.Rekey(ctx)
				if err != nil {
					return err
				}
				verb := "rotated"
				if res.GetResumed() {
					verb = "finished an interrupted rotation of"
				}
				fmt.Fprintf(a.stdout, "%s the data keyset: primary key %d; re-encrypted %d of %d versions; removed old key ids %s\n",
					verb, res.GetNewPrimaryKeyId(), res.GetReencrypted(), res.GetTotal(), orDash(joinIDs(res.GetRemovedKeyIds())))
				return nil
			})
		},
	}
}
