package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/broker"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newCredentialCmd(a *app) *cobra.Command {
	return groupCmd("credential", "Store, rotate, list and delete upstream credentials",
		newPutCmd(a),
		newRotateCmd(a, "rotate NAME", "Store a new version of a credential (value from stdin or --from-file)"),
		newCredentialListCmd(a),
		newCredentialDeleteCmd(a),
		newCredentialHistoryCmd(a),  // rotation.go
		newCredentialRollbackCmd(a), // rotation.go
		newCredentialPolicyCmd(a),   // rotation.go
	)
}

// nameOnly accepts exactly one argument, NAME. A second argument is most likely a value typed on
// the command line, where it would land in shell history and ps: refuse it and say why (without
// repeating it).
func nameOnly(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return fmt.Errorf("%s needs NAME", subcommandPath(cmd))
	case len(args) > 1:
		return fmt.Errorf("%s takes only NAME: the value is read from stdin or --from-file, never from the command line", subcommandPath(cmd))
	}
	return nil
}

func newPutCmd(a *app) *cobra.Command {
	var fromFile string
	cmd := &cobra.Command{
		Use:   "put NAME",
		Short: "Store a new credential (value from stdin or --from-file)",
		Long: `Store a new credential as version 1. The value is read from --from-file, or from stdin:
typed without echo when stdin is a terminal, otherwise the whole input. One trailing newline is
removed. Values are never accepted on the command line.

NAME is the credential the tools spend: ` + strings.Join(broker.SpentCredentials(), ", ") + `. A name no tool uses
is stored all the same, with a warning.`,
		Example: `  brokerctl credential put scavio_api_key < scavio.key
  pass show scavio | brokerctl credential put scavio_api_key`,
		Args: nameOnly,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			value, err := a.readValue(cmd.Context(), fromFile, fmt.Sprintf("Value for credential %s (input hidden): ", name))
			if err != nil {
				return err
			}
			defer clear(value)
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				cred, err := c.PutCredential(ctx, name, value)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "stored %s version %d\n", name, cred.GetVersion())
				warnUnusedCredential(a.stderr, name)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file instead of stdin")
	return cmd
}

// warnUnusedCredential says on w when no tool spends the credential name: the usual first-run
// slip is a key stored under another name than the one the tools read, and every search then
// fails with "credential scavio_api_key is not stored".
func warnUnusedCredential(w io.Writer, name string) {
	if len(broker.ToolsSpending(name)) > 0 {
		return
	}
	fmt.Fprintf(w, "warning: no tool uses credential %s (the tools spend %s); it was stored anyway: put the key under that name, and `brokerctl credential delete %s` if this was a mistake\n",
		name, strings.Join(broker.SpentCredentials(), ", "), name)
}

func newRotateCmd(a *app, use, short string) *cobra.Command {
	var fromFile string
	var verify bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long: `Store a new version of an existing credential; calls that start after this returns use
it. The value is read exactly as by ` + "`credential put`" + `: --from-file, or stdin (hidden when a
terminal), one trailing newline removed, never from the command line.

With --verify the new value is staged (pending), tried with one real upstream call, and made current
only if the upstream accepts it; a key the upstream rejects is discarded and the current one stays.`,
		Args: nameOnly,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			value, err := a.readValue(cmd.Context(), fromFile, fmt.Sprintf("New value for credential %s (input hidden): ", name))
			if err != nil {
				return err
			}
			defer clear(value)
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				cred, err := rotateValue(ctx, c, name, value, verify) // rotation.go
				if err != nil {
					return err
				}
				if verify {
					fmt.Fprintf(a.stdout, "rotated %s to version %d (verified upstream)\n", name, cred.GetVersion())
					return nil
				}
				fmt.Fprintf(a.stdout, "rotated %s to version %d\n", name, cred.GetVersion())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file instead of stdin")
	cmd.Flags().BoolVar(&verify, "verify", false, "try the new value upstream first; make it current only if accepted")
	return cmd
}

// credentialJSON is one element of `credential list --json`.
type credentialJSON struct {
	Name      string `json:"name"`
	Version   uint64 `json:"version"`
	CreatedAt string `json:"created_at,omitempty"`
	RotatedAt string `json:"rotated_at,omitempty"`
}

func newCredentialListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List credentials (names, versions, times, rotation due dates and spending limits; never values)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var creds []*credbrokerv1.Credential
			err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				var err error
				creds, err = c.ListCredentials(ctx)
				return err
			})
			if err != nil {
				return err
			}
			now := time.Now()
			if asJSON {
				out := make([]credentialListJSON, 0, len(creds))
				for _, c := range creds {
					out = append(out, credentialListJSON{credentialJSON{
						Name:      c.GetName(),
						Version:   c.GetVersion(),
						CreatedAt: rfc3339(c.GetCreatedAt()),
						RotatedAt: rfc3339(c.GetRotatedAt()),
					}, rotationOf(c, now), limitsOf(c)}) // rotation.go, economics.go
				}
				return writeJSON(a.stdout, out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tCREATED\tROTATED\tAGE\tDUE\tLIMITS")
			for _, c := range creds {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", c.GetName(), c.GetVersion(), orDash(rfc3339(c.GetCreatedAt())), orDash(rfc3339(c.GetRotatedAt())),
					ageColumn(c, now), dueColumn(c, now), limitsColumn(c))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func newCredentialDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a credential and all its versions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				if err := c.DeleteCredential(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "deleted %s\n", args[0])
				return nil
			})
		},
	}
}
