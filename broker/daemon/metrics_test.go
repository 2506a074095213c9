package daemon

import (
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
		{name: "unix scheme", addr: "unix:/run/credbroker/broker.sock", wantErr: "never served on a Unix socket"},
		{name: "path", addr: "/run/credbroker/metrics.sock", wantErr: "never served on a Unix socket"},
		{name: "no port", addr: "127.0.0.1", wantErr: "want host:port"},
		{name: "non-loopback allowed", addr: "0.0.0.0:0", allow: true},
		{name: "unix even if allowed", addr: "unix:/x", allow: true, wantErr: "never served on a Unix socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lis, err := listenMetrics(tc.addr, tc.allow)
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
