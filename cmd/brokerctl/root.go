package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// brokerAPI is the part of *client.Client that brokerctl uses; tests substitute a fake.
type brokerAPI interface {
	Search(context.Context, *credbrokerv1.SearchRequest) (*credbrokerv1.SearchResponse, error)
	PutCredential(ctx context.Context, name string, value []byte) (*credbrokerv1.Credential, error)
	RotateCredential(ctx context.Context, name string, value []byte) (*credbrokerv1.Credential, error)
	ListCredentials(context.Context) ([]*credbrokerv1.Credential, error)
	DeleteCredential(ctx context.Context, name string) error
	MintToken(context.Context, *credbrokerv1.MintTokenRequest) (*credbrokerv1.MintTokenResponse, error)
	ListAllTokens(ctx context.Context, includeExpired bool) ([]*credbrokerv1.TokenInfo, error)
	RevokeToken(ctx context.Context, id string) (*credbrokerv1.TokenInfo, error)
	Status(context.Context) (*credbrokerv1.StatusResponse, error)
	GetToken(ctx context.Context, id string) (*credbrokerv1.TokenInfo, error)
	ListAudit(context.Context, *credbrokerv1.ListAuditRequest) ([]*credbrokerv1.AuditRecord, error)
	VerifyAudit(context.Context) (*credbrokerv1.VerifyAuditResponse, error)
	Close() error
}

// app holds what every command shares: the streams, the environment and the global flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// dial connects to brokerd; token is empty for admin calls.
	dial func(socket, token string) (brokerAPI, error)

	socket  string
	timeout time.Duration
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *app {
	return &app{
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		getenv: os.Getenv,
		dial: func(socket, token string) (brokerAPI, error) {
			var opts []client.Option
			if token != "" {
				opts = append(opts, client.WithToken(token))
			}
			return client.New(socket, opts...)
		},
	}
}

// call connects, runs fn under --timeout and closes the connection. Anything slow that is not an
// RPC (reading a secret from a terminal) must happen before call so it does not eat the timeout.
func (a *app) call(cmd *cobra.Command, token string, fn func(context.Context, brokerAPI) error) error {
	c, err := a.dial(a.socket, token)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()
	if a.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	return fn(ctx, c)
}

// callBackground is call with a fresh context: for cleanup after the command's own context was
// canceled (a forwarded SIGINT or SIGTERM cancels it too).
func (a *app) callBackground(fn func(context.Context, brokerAPI) error) error {
	c, err := a.dial(a.socket, "")
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return fn(ctx, c)
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "brokerctl",
		Short: "Operate a credbroker daemon (brokerd)",
		Long: `brokerctl talks to brokerd over its Unix socket. It stores and rotates upstream
credentials (values are read from stdin or a file, never from the command line), mints and
revokes scoped tokens, and can run a search with a token for testing.

It sends nothing to a socket served by another uid than root, your own or one listed in
$CREDBROKER_SERVER_UID (comma-separated): that could be another user squatting on the path.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)

	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", client.DefaultSocket(), "brokerd socket path (env CREDBROKER_SOCKET)")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "time limit for each call to brokerd (0: none)")

	root.AddCommand(
		newKeysetCmd(a),
		newCredentialCmd(a),
		newRotateCmd(a, "rotate NAME", "Rotate a credential (same as `credential rotate`)"),
		newTokenCmd(a),
		newSearchCmd(a),
		newStatusCmd(a),
		newAuditCmd(a),
		newUsageCmd(a),
		newHealthCmd(a),
		newImportCmd(a), // importcmd.go
		newRekeyCmd(a),  // keyset_prune.go
		newWorkloadCmd(a),
		newExecCmd(a),
	)
	return root
}

// groupCmd is a command that only holds subcommands. Cobra would print help and exit 0 for
// `brokerctl token lst`; a typo must fail instead.
func groupCmd(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return fmt.Errorf("unknown command %q for %q; see `%s --help`", args[0], cmd.CommandPath(), cmd.CommandPath())
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// errorPrefixes are added in front of the server's message where the message alone may not say
// what kind of failure it was.
var errorPrefixes = []struct {
	sentinel error
	prefix   string
}{
	{client.ErrUnauthenticated, "unauthenticated"},
	{client.ErrPermissionDenied, "permission denied"},
	{client.ErrDeadlineExceeded, "timed out"},
	{client.ErrUnimplemented, "not supported by this brokerd (is it older than brokerctl?)"},
	{client.ErrInternal, "internal error"},
}

// errorLine renders err as the single line brokerctl prints after "brokerctl: ".
func errorLine(err error) string {
	if errors.Is(err, context.Canceled) || errors.Is(err, client.ErrCanceled) {
		return "interrupted"
	}
	msg := err.Error()
	var ce *client.Error
	if errors.As(err, &ce) {
		for _, p := range errorPrefixes {
			if errors.Is(err, p.sentinel) && !strings.HasPrefix(strings.ToLower(msg), p.prefix) {
				msg = p.prefix + ": " + msg
				break
			}
		}
	}
	return oneLine(msg)
}

// oneLine joins a multi-line message (cobra's "unknown command … \nRun '…' for usage.") into one.
func oneLine(msg string) string {
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			if strings.HasSuffix(parts[i-1], "?") || strings.HasSuffix(parts[i-1], ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(p)
	}
	return b.String()
}

// subcommandPath is the command path without the root ("credential put"), for messages that
// already start with "brokerctl: ".
func subcommandPath(cmd *cobra.Command) string {
	p := cmd.CommandPath()
	if cmd.HasParent() {
		p = strings.TrimPrefix(p, cmd.Root().Name()+" ")
	}
	return p
}
