package client

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestServerUIDs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     string
		extra   []uint32
		want    []uint32
		wantErr string
	}{
		{"unset: root and own uid", "", nil, []uint32{0, 1000}, ""},
		{"one", "997", nil, []uint32{0, 1000, 997}, ""},
		{"several, spaces", " 997, 998 ", []uint32{5}, []uint32{0, 1000, 997, 998, 5}, ""},
		{"option only", "", []uint32{65534}, []uint32{0, 1000, 65534}, ""},
		{"a name, not a uid", "credbroker", nil, nil, `"credbroker" is not a numeric uid`},
		{"negative", "-1", nil, nil, "not a numeric uid"},
		{"empty field", "997,", nil, nil, `"" is not a numeric uid`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := serverUIDs(func(k string) string {
				if k == ServerUIDEnv {
					return tc.env
				}
				return ""
			}, 1000, tc.extra)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "CREDBROKER_SERVER_UID") {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	t.Setenv(ServerUIDEnv, "nope")
	if _, err := New(filepath.Join(t.TempDir(), "s.sock")); err == nil || !strings.Contains(err.Error(), "not a numeric uid") {
		t.Fatalf("New with a malformed $%s: %v", ServerUIDEnv, err)
	}
}

// listenAs returns a Unix socket listener whose listen(2) ran with effective uid uid, so clients see
// that uid through SO_PEERCRED, as they would a server run by that user. Only the calling OS
// thread changes uid (a raw setresuid, not syscall.Setuid, which changes every thread), and only
// for the listen call; binding happens as root, in the test's own directory.
func listenAs(t *testing.T, uid int) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "squat.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			errc <- e
			return
		}
		lerr := syscall.Listen(fd, 16)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// Leave the thread locked: it ends with this goroutine instead of running others as uid.
			errc <- e
			return
		}
		runtime.UnlockOSThread()
		errc <- lerr
	}()
	if err := <-errc; err != nil {
		syscall.Close(fd)
		t.Fatalf("listen as uid %d: %v", uid, err)
	}
	f := os.NewFile(uintptr(fd), path)
	lis, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	return lis, path
}

// A socket served by another uid than root, the client's own, or one it was told to trust may be
// a squatter: the client refuses before sending anything, and says what to set if it is brokerd.
func TestRefusesSocketServedByUntrustedUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to serve a socket as uid 65534 (CI runs as root)")
	}
	const squatter = 65534
	lis, sock := listenAs(t, squatter)
	// The squatter records every byte it receives on each connection.
	received := make(chan []byte, 16)
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				b, _ := io.ReadAll(conn)
				conn.Close()
				received <- b
			}()
		}
	}()

	c := newClient(t, sock, WithToken("cbt_0123456789abcdef_secrettoken"), WithServerUID(997))
	_, err := c.PutCredential(testContext(t), "scavio_api_key", []byte("s3cret"))
	if !errors.Is(err, ErrUntrustedServer) {
		t.Fatalf("err %v, want ErrUntrustedServer", err)
	}
	for _, want := range []string{"the socket " + sock + " is served by uid 65534", "not root, your uid 0 or $CREDBROKER_SERVER_UID",
		"refusing to send a token or secret", "set CREDBROKER_SERVER_UID=65534"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// The client closed the connection before returning: the squatter's read has ended.
	if b := <-received; len(b) != 0 {
		t.Fatalf("the squatter received %d bytes: %q", len(b), b)
	}
}

// Told to trust the server's uid, by $CREDBROKER_SERVER_UID or WithServerUID, the client talks to it.
func TestTrustsConfiguredServerUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to serve a socket as uid 65534 (CI runs as root)")
	}
	for _, tc := range []struct {
		name string
		env  string
		opts []Option
	}{
		{"env", "1,65534", nil},
		{"option", "", []Option{WithServerUID(65534)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(ServerUIDEnv, tc.env)
			lis, sock := listenAs(t, 65534)
			srv := grpc.NewServer()
			credbrokerv1.RegisterAdminServiceServer(srv, &fakeBroker{})
			go srv.Serve(lis)
			t.Cleanup(srv.Stop)
			c := newClient(t, sock, tc.opts...)
			if _, err := c.PutCredential(testContext(t), "scavio_api_key", []byte("s3cret")); err != nil {
				t.Fatalf("put to a trusted server: %v", err)
			}
		})
	}
}

// checkServer on its own, runnable without root: a server of the client's own uid is refused when
// that uid is not in the trusted list.
func TestCheckServerUID(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	me := uint32(os.Geteuid())
	if err := checkServer(conn, sock, []uint32{me}); err != nil {
		t.Fatalf("own uid refused: %v", err)
	}
	var untrusted *untrustedServer
	if err := checkServer(conn, sock, []uint32{me + 1}); !errors.As(err, &untrusted) || untrusted.uid != me || untrusted.pid != int32(os.Getpid()) {
		t.Fatalf("untrusted uid: %v", err)
	}
}
