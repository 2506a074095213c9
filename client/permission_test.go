package client

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A socket the caller may not open is a permission problem, not a stopped brokerd. Root passes
// every permission check, so this runs unprivileged; as root, cmd/brokerd's
// TestSocketPermissionDeniedNamesTheGroup runs brokerctl as another uid instead.
func TestSocketPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root is never denied by file modes; cmd/brokerd covers EACCES as root with another uid")
	}
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "b.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	// The directory without search permission: connect fails with EACCES.
	if err := os.Chmod(dir, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	c := newClient(t, sock)
	for name, call := range map[string]func() error{
		"status": func() error { _, err := c.Status(testContext(t)); return err },
		"health": func() error { _, err := c.Health(testContext(t), ""); return err },
	} {
		err := call()
		if !errors.Is(err, ErrSocketDenied) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrPermissionDenied) || status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: err = %v (code %s), want ErrSocketDenied with code PermissionDenied", name, err, status.Code(err))
		}
		want := "permission denied on " + sock + ": your uid " + strconv.Itoa(os.Geteuid()) + " "
		if !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "is it running") {
			t.Errorf("%s: err = %q, want prefix %q", name, err, want)
		}
	}
}

// Health reports an unreachable socket like every other call, not as gRPC's transport text.
func TestHealthUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := newClient(t, sock).Health(testContext(t), "")
	want := "cannot reach brokerd at " + sock + ": is it running? (connect: no such file or directory)"
	if !errors.Is(err, ErrUnavailable) || err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}

func TestAncestors(t *testing.T) {
	got := strings.Join(ancestors("/run/credbroker"), " ")
	if got != "/ /run /run/credbroker" {
		t.Fatalf("ancestors = %q", got)
	}
}
