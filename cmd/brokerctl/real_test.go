package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// deniedAdmin refuses everything, as brokerd does for a non-admin uid.
type deniedAdmin struct {
	credbrokerv1.UnimplementedAdminServiceServer
}

func (deniedAdmin) Status(context.Context, *credbrokerv1.StatusRequest) (*credbrokerv1.StatusResponse, error) {
	return nil, status.Error(codes.PermissionDenied, "uid 1000 is not an admin")
}

// runReal runs brokerctl with the real client and returns the line main would print.
func runReal(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := newRootCmd(newApp(strings.NewReader(""), &stdout, &stderr))
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	if err == nil {
		t.Fatalf("%v succeeded", args)
	}
	return "brokerctl: " + errorLine(err)
}

func TestRealClientErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "b.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	credbrokerv1.RegisterAdminServiceServer(srv, deniedAdmin{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	if got, want := runReal(t, "--socket", sock, "status"), "brokerctl: permission denied: uid 1000 is not an admin"; got != want {
		t.Errorf("denied: %q, want %q", got, want)
	}

	missing := filepath.Join(t.TempDir(), "none.sock")
	want := "brokerctl: cannot reach brokerd at " + missing + ": is it running? (connect: no such file or directory)"
	if got := runReal(t, "--socket", missing, "status"); got != want {
		t.Errorf("unreachable: %q, want %q", got, want)
	}
	t.Setenv("CREDBROKER_SOCKET", missing)
	// The default of --socket is read when the command is built, from the environment.
	if got := runReal(t, "token", "list"); got != want {
		t.Errorf("unreachable via CREDBROKER_SOCKET: %q, want %q", got, want)
	}
}
