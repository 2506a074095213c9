package main

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/client"
)

// health prints one plain line: never gRPC's "Unavailable: connection error: desc = …" text.
func TestHealthMessages(t *testing.T) {
	tests := []struct {
		name    string
		st      healthpb.HealthCheckResponse_ServingStatus
		err     error
		want    string // the line main prints
		wantOut string
	}{
		{"serving", healthpb.HealthCheckResponse_SERVING, nil, "", "SERVING\n"},
		{"stopping", healthpb.HealthCheckResponse_NOT_SERVING, nil, "brokerctl: brokerd at /s is not healthy: NOT_SERVING (stopping, or not ready yet)", ""},
		{"unreachable", 0, &client.Error{Code: codes.Unavailable, Message: "cannot reach brokerd at /s: is it running? (connect: connection refused)"},
			"brokerctl: not healthy: cannot reach brokerd at /s: is it running? (connect: connection refused)", ""},
		{"permission", 0, &client.Error{Code: codes.Unavailable, Message: "permission denied on /s: your uid 1000 is not in group credbroker (ask an operator: usermod -aG credbroker ann)"},
			"brokerctl: not healthy: permission denied on /s: your uid 1000 is not in group credbroker (ask an operator: usermod -aG credbroker ann)", ""},
		{"unknown service", 0, &client.Error{Code: codes.NotFound, Message: "unknown service"},
			`brokerctl: brokerd at /s is not healthy: it has no service "x.Y" (it serves credbroker.v1.SearchService and credbroker.v1.AdminService)`, ""},
		{"timeout", 0, &client.Error{Code: codes.DeadlineExceeded, Message: "context deadline exceeded"}, "brokerctl: brokerd at /s is not healthy: no answer within --timeout", ""},
	}
	orig := checkHealth
	t.Cleanup(func() { checkHealth = orig })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkHealth = func(context.Context, string, string) (healthpb.HealthCheckResponse_ServingStatus, error) {
				return tc.st, tc.err
			}
			args := []string{"--socket", "/s", "health"}
			if tc.name == "unknown service" {
				args = append(args, "--service", "x.Y")
			}
			r := runCmd(t, &fakeAPI{}, "", nil, args...)
			got := ""
			if r.err != nil {
				got = "brokerctl: " + errorLine(r.err)
			}
			if got != tc.want || r.stdout != tc.wantOut {
				t.Errorf("got %q stdout %q, want %q stdout %q", got, r.stdout, tc.want, tc.wantOut)
			}
			if strings.Contains(got, "desc =") || strings.Contains(got, "rpc error") {
				t.Errorf("raw gRPC text: %q", got)
			}
		})
	}
}
