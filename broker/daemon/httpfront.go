package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/httpfront"
)

// listenHTTP opens the HTTP front's listeners (--http-listen, repeatable): unix:/absolute/path, a
// socket with the gRPC socket's mode and group, or a loopback TCP address (127.0.0.1:PORT,
// [::1]:PORT, localhost:PORT). Anything else is refused: the front hands out searches paid with
// the operator's key to whoever presents a token, and a token is not meant to travel off the host.
func listenHTTP(addrs []string, cfg Config) (_ []net.Listener, err error) {
	var out []net.Listener
	defer func() {
		if err != nil {
			for _, l := range out {
				l.Close()
			}
		}
	}()
	for _, addr := range addrs {
		l, err := listenHTTPOne(addr, cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func listenHTTPOne(addr string, cfg Config) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("--http-listen %q: want unix:/absolute/path, e.g. unix:/run/credbroker/http.sock", addr)
		}
		for _, other := range []struct{ path, flag string }{{cfg.Socket, "--socket"}, {strings.TrimPrefix(cfg.MetricsListen, "unix:"), "--metrics-listen"}} {
			if other.path != "" && filepath.Clean(path) == filepath.Clean(other.path) {
				return nil, fmt.Errorf("--http-listen %q is the socket of %s; the HTTP front needs a socket of its own", addr, other.flag)
			}
		}
		lis, err := listen(path, cfg.SocketMode, cfg.SocketGroup)
		if err != nil {
			return nil, fmt.Errorf("--http-listen %s: %w", addr, err)
		}
		return lis, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || strings.Contains(addr, "/") {
		return nil, fmt.Errorf("--http-listen %q: want unix:/absolute/path or a loopback 127.0.0.1:PORT or [::1]:PORT", addr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("--http-listen %q is not a loopback address: the HTTP front serves local clients only; use 127.0.0.1:%s, [::1]:%s or unix:PATH", addr, port, port)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("--http-listen %s: %w", addr, err)
	}
	return lis, nil
}

// serveHTTPFront serves the HTTP front on each listener, under the same connection caps as the
// gRPC socket, until the returned stop function is called. Unix-socket files are removed then.
func serveHTTPFront(lis []net.Listener, b *broker.Broker, cfg Config, admins grpcapi.Admins, log *slog.Logger) (stop func(deadline time.Time)) {
	if len(lis) == 0 {
		return func(time.Time) {}
	}
	srv := httpfront.NewServer(httpfront.New(b, log), log)
	base, endCalls := context.WithCancelCause(context.Background())
	srv.BaseContext = func(net.Listener) context.Context { return base }
	var paths []string
	for _, l := range lis {
		if l.Addr().Network() == "unix" {
			paths = append(paths, l.Addr().String())
			log.Info("serving the Scavio-compatible HTTP front on a Unix socket", "socket", l.Addr().String())
		} else {
			log.Info("serving the Scavio-compatible HTTP front on loopback TCP (callers' uids from the kernel's socket table)", "addr", "http://"+l.Addr().String())
		}
		l := limitConns(l, cfg, admins, b)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("HTTP front stopped", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	var once sync.Once
	return func(deadline time.Time) {
		once.Do(func() {
			// Requests in flight finish until the shutdown deadline (the gRPC calls too: they
			// drain at the same time). Then, as the gRPC drainer does, their contexts end with
			// broker.ErrShuttingDown: each handler answers 503 "shutting down" and writes its audit
			// record through its usual path, for up to drainGrace, before the store closes; only
			// what still runs then has its connection closed under it.
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			err := srv.Shutdown(ctx)
			cancel()
			if err != nil {
				endCalls(broker.ErrShuttingDown)
				ctx, cancel := context.WithTimeout(context.Background(), drainGrace)
				if err := srv.Shutdown(ctx); err != nil {
					log.Error("HTTP front requests still running after being ended; closing their connections", "grace", drainGrace)
					srv.Close()
				}
				cancel()
			}
			endCalls(nil)
			for _, p := range paths {
				os.Remove(p)
			}
		})
	}
}
