package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

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
	resp, err := healthpb.NewHealthClient(c.Conn()).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.GetStatus(), nil
}

func newHealthCmd(a *app) *cobra.Command {
	var service string
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
				st := status.Convert(err)
				return fmt.Errorf("brokerd at %s is not healthy: %s: %s", a.socket, st.Code(), st.Message())
			}
			if st != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("brokerd at %s is %s", a.socket, st)
			}
			fmt.Fprintln(a.stdout, st)
			return nil
		},
	}
	cmd.Flags().StringVar(&service, "service", "", "check one service (credbroker.v1.SearchService, credbroker.v1.AdminService); default: the whole server")
	return cmd
}
