package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// childExit is the exit status `brokerctl exec` passes through from its child.
type childExit int

func (c childExit) Error() string { return fmt.Sprintf("child exited with status %d", int(c)) }

// forwarded are the signals `brokerctl exec` passes on to its child.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

func newExecCmd(a *app) *cobra.Command {
	var (
		tools         []string
		ttl           time.Duration
		maxUses       uint64
		budget, label string
	)
	cmd := &cobra.Command{
		Use:   "exec [--tools TOOL,...] [--ttl 15m] -- CMD [ARGS...]",
		Short: "Run a program with a token that lives exactly as long as it does",
		Long: `Mint a token bound to this uid and to the life of the program (admin), run CMD with
CREDBROKER_TOKEN and CREDBROKER_SOCKET in its environment (never in its arguments), forward
signals to it, revoke the token when it exits and exit with its status. brokerd also watches
brokerctl itself: if brokerctl is killed, the token dies with it. For MCP servers in any language
that read a token from the environment.`,
		Example: `  brokerctl exec --tools web_search -- python3 my_mcp_server.py`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return errors.New("put the program after --, e.g. brokerctl exec --tools web_search -- CMD ARGS")
			}
			var clean []string
			for _, t := range tools {
				if t = strings.TrimSpace(t); t != "" {
					clean = append(clean, t)
				}
			}
			if len(clean) == 0 {
				return errors.New("--tools needs at least one tool name")
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl must be positive, got %s", ttl)
			}
			prog, err := exec.LookPath(args[0])
			if err != nil {
				return fmt.Errorf("cannot run %s: %w", args[0], err)
			}
			if label == "" {
				label = "exec:" + filepath.Base(args[0])
			}
			uid := uint32(os.Getuid())
			req := &credbrokerv1.MintTokenRequest{Tools: clean, Ttl: durationpb.New(ttl), MaxUses: maxUses, BindUid: &uid, Label: label, BindProcess: true}
			if budget != "" {
				if req.BudgetCredits, req.BudgetPeriod, err = parseBudget(budget); err != nil {
					return err
				}
			}
			socket, err := filepath.Abs(a.socket)
			if err != nil {
				return err
			}
			var minted *credbrokerv1.MintTokenResponse
			if err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				minted, err = c.MintToken(ctx, req)
				return err
			}); err != nil {
				return err
			}
			code, runErr := runChild(prog, args, minted.GetToken(), socket)
			// Revoke whatever happened to the child; brokerd's watch of this process is the backstop.
			revokeErr := a.callBackground(func(ctx context.Context, c brokerAPI) error {
				_, err := c.RevokeToken(ctx, minted.GetId())
				return err
			})
			if runErr != nil {
				return runErr
			}
			if revokeErr != nil {
				fmt.Fprintf(a.stderr, "brokerctl: token %s not revoked after the program exited (%s); it dies with this process anyway\n", minted.GetId(), errorLine(revokeErr))
			}
			if code != 0 {
				return childExit(code)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&tools, "tools", []string{"web_search"}, "comma-separated tools the token may call")
	fl.DurationVar(&ttl, "ttl", 15*time.Minute, "longest the token lives (it ends earlier when the program exits)")
	fl.Uint64Var(&maxUses, "max-uses", 0, "maximum number of calls (0: unlimited)")
	fl.StringVar(&budget, "budget", "", "upstream credits the token may spend: N/d or N/m")
	fl.StringVar(&label, "label", "", "label of the token (default exec:PROGRAM)")
	return cmd
}

// runChild runs prog with the token in its environment, forwarding signals, and returns its exit
// status (128+N when a signal N ended it, as a shell reports it).
func runChild(prog string, args []string, token, socket string) (int, error) {
	child := exec.Command(prog, args[1:]...)
	child.Args[0] = args[0]
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDBROKER_TOKEN=") && !strings.HasPrefix(kv, "CREDBROKER_SOCKET=") {
			env = append(env, kv)
		}
	}
	child.Env = append(env, "CREDBROKER_TOKEN="+token, "CREDBROKER_SOCKET="+socket)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	if err := child.Start(); err != nil {
		return 0, fmt.Errorf("cannot run %s: %w", args[0], err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				child.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := child.Wait()
	close(done)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	default:
		return 0, err
	}
}
