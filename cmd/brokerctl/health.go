package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/client"
)

// checkHealth asks brokerd's grpc.health.v1 service about service ("" for the server as a whole);
// tests substitute it.
var checkHealth = func(ctx context.Context, socket, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	c, err := client.New(socket)
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	defer c.Close()
	return c.Health(ctx, service)
}

// healthError is the one line `health` prints for a failed check: why, in words, not the gRPC
// status text ("Unavailable: connection error: desc = \"transport: Error while dialing…").
func healthError(socket, service string, err error) error {
	switch {
	case errors.Is(err, client.ErrNotFound):
		return fmt.Errorf("brokerd at %s is not healthy: it has no service %q (it serves credbroker.v1.SearchService and credbroker.v1.AdminService)", socket, service)
	case errors.Is(err, client.ErrDeadlineExceeded):
		return fmt.Errorf("brokerd at %s is not healthy: no answer within --timeout", socket)
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrSocketDenied):
		// The client's message already names the socket and the cause (not running, permission).
		return fmt.Errorf("not healthy: %s", err.Error())
	}
	return fmt.Errorf("brokerd at %s is not healthy: %s", socket, err.Error())
}

func newHealthCmd(a *app) *cobra.Command {
	var (
		service string
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check that brokerd is serving (exit 0) or not (exit 1); usable as ExecStartPost= or a probe",
		Long: `Ask brokerd's grpc.health.v1 service whether it is serving. Prints SERVING and exits 0 if
it is; otherwise prints why on stderr and exits 1 (not reachable, NOT_SERVING while shutting down,
unknown service). Needs no admin rights and no token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if a.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, a.timeout)
				defer cancel()
			}
			st, err := checkHealth(ctx, a.socket, service)
			if err != nil {
				return healthError(a.socket, service, err)
			}
			switch st {
			case healthpb.HealthCheckResponse_SERVING:
			case healthpb.HealthCheckResponse_NOT_SERVING:
				return fmt.Errorf("brokerd at %s is not healthy: NOT_SERVING (stopping, or not ready yet)", a.socket)
			default:
				return fmt.Errorf("brokerd at %s is not healthy: %s", a.socket, st)
			}
			fmt.Fprintln(a.stdout, st)
			if verbose {
				// The master key line needs Status (admin only); a refusal is said, not failed on:
				// the probe's answer is the line above.
				err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
					s, err := c.Status(ctx)
					if err == nil {
						fmt.Fprintf(a.stdout, "master key: %s\n", masterKeyLine(s))
					}
					return err
				})
				if err != nil {
					fmt.Fprintf(a.stderr, "master key: unknown (%v)\n", err)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also print the master key's source and last KMS contact (admin only)")
	cmd.Flags().StringVar(&service, "service", "", "check one service (credbroker.v1.SearchService, credbroker.v1.AdminService); default: the whole server")
	return cmd
}
