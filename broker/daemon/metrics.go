package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/upstream"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// listenMetrics opens the Prometheus listener for --metrics-listen, or returns nil when it is
// empty. Metrics are never served on brokerd's gRPC socket (brokerSocket). "unix:PATH" serves them
// on a Unix socket of their own, created mode 0600, so only brokerd's user (and root) can read
// them; a TCP address must be loopback unless allowNonLoopback, and even then every local user can
// read it: metrics name tools, credentials and call rates, which is nobody else's business.
func listenMetrics(addr string, allowNonLoopback bool, brokerSocket string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("--metrics-listen %q: want unix:/absolute/path, e.g. unix:/run/credbroker/metrics.sock", addr)
		}
		if filepath.Clean(path) == filepath.Clean(brokerSocket) {
			return nil, fmt.Errorf("--metrics-listen %q is brokerd's gRPC socket; metrics need a socket of their own", addr)
		}
		lis, err := listen(path, 0o600, "")
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
		}
		return lis, nil
	}
	if strings.Contains(addr, "/") {
		return nil, fmt.Errorf("--metrics-listen %q: want host:port on loopback TCP (e.g. 127.0.0.1:9464) or unix:PATH for a Unix socket", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %q: want host:port, e.g. 127.0.0.1:9464, or unix:PATH: %w", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if !allowNonLoopback && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("--metrics-listen %q is not a loopback address, so metrics would be reachable from other machines; use 127.0.0.1:%s or unix:PATH, or add --metrics-allow-non-loopback if you mean it", addr, port)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	return lis, nil
}

// serveMetrics serves /metrics on lis (if any) until the returned stop function is called.
func serveMetrics(lis net.Listener, version string, log *slog.Logger) (stop func()) {
	metrics.SetBuildInfo(version)
	if lis == nil {
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4, Timeout: 10 * time.Second,
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	unixPath := ""
	if lis.Addr().Network() == "unix" {
		unixPath = lis.Addr().String()
		log.Info("serving Prometheus metrics on a Unix socket (mode 0600)", "socket", unixPath, "path", "/metrics")
	} else {
		log.Info("serving Prometheus metrics", "addr", "http://"+lis.Addr().String()+"/metrics")
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if unixPath != "" {
			os.Remove(unixPath) // listen leaves the file; it is ours, and stale once we stop
		}
	}
}

// metricsUnary counts every unary call by method, tool and the code the client saw, and times it.
// It runs outermost, so refused calls and audit failures are counted as the client saw them.
func metricsUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	metrics.CallCounter(info.FullMethod, toolLabel(info.FullMethod, req), code.String()).Inc()
	metrics.CallDurationOf(info.FullMethod).Observe(time.Since(start).Seconds())
	if strings.HasPrefix(info.FullMethod, "/"+pb.SearchService_ServiceDesc.ServiceName+"/") {
		// Every SearchService call authenticates its token first; Unauthenticated is the only
		// code a failed token check produces.
		metrics.TokenValidated(code != codes.Unauthenticated)
	}
	return resp, err
}

// toolLabel is the tool a Search call asked for, as a bounded label: a name from the tool table,
// "unknown" for anything else a client sent, "" for other methods.
func toolLabel(method string, req any) string {
	if method != pb.SearchService_Search_FullMethodName {
		return ""
	}
	r, ok := req.(interface{ GetTool() string })
	if !ok {
		return ""
	}
	name := r.GetTool()
	if name == "" {
		name = broker.DefaultTool
	}
	if t, ok := broker.LookupTool(name); ok {
		return t.Name
	}
	return "unknown"
}

// meteredUpstreamClient is the HTTP client for the upstream: upstream.NewTransport (no proxy unless
// --upstream-proxy), wrapped to time each attempt and count its status.
func meteredUpstreamClient(proxy *url.URL) *http.Client {
	return &http.Client{Transport: meteredTransport{upstream.NewTransport(proxy)}}
}

// meteredTransport observes each upstream attempt. Labels are the request path (from the tool
// table, so bounded) and the status code; it never looks at headers or bodies.
type meteredTransport struct{ next http.RoundTripper }

func (t meteredTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	took := time.Since(start)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	metrics.UpstreamObserve(r.URL.Path, code, took)
	return resp, err
}
