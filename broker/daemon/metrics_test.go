package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestListenMetrics(t *testing.T) {
	for _, tc := range []struct {
		name, addr string
		allow      bool
		wantErr    string
	}{
		{name: "off", addr: ""},
		{name: "loopback v4", addr: "127.0.0.1:0"},
		{name: "loopback v6", addr: "[::1]:0"},
		{name: "localhost", addr: "localhost:0"},
		{name: "all interfaces", addr: ":0", wantErr: "not a loopback address"},
		{name: "unspecified", addr: "0.0.0.0:0", wantErr: "not a loopback address"},
		{name: "hostname", addr: "metrics.example:0", wantErr: "not a loopback address"},
		{name: "unix: the gRPC socket", addr: "unix:/run/credbroker/broker.sock", wantErr: "is brokerd's gRPC socket"},
		{name: "unix: relative", addr: "unix:metrics.sock", wantErr: "unix:/absolute/path"},
		{name: "path without unix:", addr: "/run/credbroker/metrics.sock", wantErr: "or unix:PATH"},
		{name: "no port", addr: "127.0.0.1", wantErr: "want host:port"},
		{name: "non-loopback allowed", addr: "0.0.0.0:0", allow: true},
		{name: "unix: the gRPC socket even if allowed", addr: "unix:/run/credbroker/broker.sock", allow: true, wantErr: "is brokerd's gRPC socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := listenMetrics(tc.addr, tc.allow, "/run/credbroker/broker.sock")
			if lis != nil {
				defer lis.Close()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				if strings.Contains(err.Error(), "address family not supported") || strings.Contains(err.Error(), "cannot assign requested address") {
					t.Skipf("no such address here: %v", err)
				}
				t.Fatalf("listenMetrics(%q): %v", tc.addr, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("listenMetrics(%q): %v, want an error containing %q", tc.addr, err, tc.wantErr)
			case tc.wantErr == "" && tc.addr != "" && lis == nil:
				t.Fatal("no listener")
			}
		})
	}
}

// --metrics-listen unix:PATH serves /metrics on a socket created 0600 (never looser, not even for a
// moment: the umask is set before the socket exists), replaces a stale one, refuses a live one,
// and removes it on stop.
func TestMetricsOnUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "cbm-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "metrics.sock")
	// A stale socket file from a killed brokerd is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	lis, err := listenMetrics("unix:"+path, false, filepath.Join(dir, "broker.sock"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("metrics socket mode %v, want a 0600 socket", fi.Mode())
	}
	if _, err := listenMetrics("unix:"+path, false, filepath.Join(dir, "broker.sock")); err == nil || !strings.Contains(err.Error(), "is live") {
		t.Fatalf("second listener on a live metrics socket: %v", err)
	}
	stop := serveMetrics(lis, "test", slogDiscard())
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	resp, err := hc.Get("http://metrics/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "credbroker_build_info") {
		t.Fatalf("GET /metrics over the socket: %d %.200s", resp.StatusCode, body)
	}
	hc.CloseIdleConnections()
	stop()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("metrics socket left behind after stop: %v", err)
	}
}

// Tool labels come from the tool table only, so a client cannot create series at will.
func TestToolLabel(t *testing.T) {
	search := pb.SearchService_Search_FullMethodName
	for _, tc := range []struct {
		method string
		req    any
		want   string
	}{
		{search, &pb.SearchRequest{Tool: "google_search"}, "google_search"},
		{search, &pb.SearchRequest{}, "web_search"},
		{search, &pb.SearchRequest{Tool: "x\" injected=\"1"}, "unknown"},
		{pb.SearchService_WhoAmI_FullMethodName, &pb.WhoAmIRequest{}, ""},
		{"/credbroker.v1.AdminService/Status", &pb.StatusRequest{}, ""},
	} {
		if got := toolLabel(tc.method, tc.req); got != tc.want {
			t.Errorf("toolLabel(%s, %v) = %q, want %q", tc.method, tc.req, got, tc.want)
		}
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
