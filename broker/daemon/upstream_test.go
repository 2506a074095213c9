package daemon

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/credbroker/credbroker/broker/logtest"
)

func TestCheckUpstream(t *testing.T) {
	for _, tc := range []struct {
		name, upstream, proxy, wantErr string
		wantProxy                      bool
	}{
		{name: "https", upstream: "https://api.scavio.dev"},
		{name: "http loopback v4", upstream: "http://127.0.0.1:8080"},
		{name: "http loopback 127/8", upstream: "http://127.3.2.1:8080"},
		{name: "http loopback v6", upstream: "http://[::1]:8080"},
		{name: "http localhost", upstream: "http://localhost:8080"},
		{name: "http remote", upstream: "http://example.com", wantErr: "http:// is refused for example.com"},
		{name: "http remote ip", upstream: "http://10.0.0.1:80", wantErr: "not a loopback host"},
		{name: "http localhost lookalike", upstream: "http://localhost.example.com", wantErr: "not a loopback host"},
		{name: "http remote with password", upstream: "http://u:sk_live_secret@example.com", wantErr: "not a loopback host"},
		// What upstream.New refuses is refused here too, before the database is opened.
		{name: "host that is only a port", upstream: "https://:443", wantErr: "must name a host"},
		{name: "opaque", upstream: "https:api.scavio.dev", wantErr: "--upstream-url"},
		{name: "proxy", upstream: "https://api.scavio.dev", proxy: "http://proxy.corp:3128", wantProxy: true},
		{name: "socks proxy", upstream: "https://api.scavio.dev", proxy: "socks5://127.0.0.1:1080", wantProxy: true},
		{name: "proxy bad scheme", upstream: "https://api.scavio.dev", proxy: "ftp://proxy.corp", wantErr: "http://, https:// or socks5://"},
		{name: "proxy no host", upstream: "https://api.scavio.dev", proxy: "http://", wantErr: "scheme://host:port"},
		{name: "proxy path", upstream: "https://api.scavio.dev", proxy: "http://u:sk_live_secret@proxy.corp/x", wantErr: "scheme://host:port"},
		// A proxy sees an http:// call whole, headers and key included (no CONNECT, no TLS), and
		// connects to the loopback host from its own side: the loopback exception does not hold.
		{name: "http loopback through remote proxy", upstream: "http://127.0.0.1:8931", proxy: "http://proxy.corp:3128", wantErr: "in clear text"},
		{name: "http loopback through remote socks proxy", upstream: "http://localhost:8931", proxy: "socks5://10.0.0.7:1080", wantErr: "in clear text"},
		{name: "http loopback through remote proxy with password", upstream: "http://[::1]:8931", proxy: "https://u:sk_live_secret@proxy.corp:3128", wantErr: "in clear text"},
		{name: "http loopback through loopback proxy", upstream: "http://127.0.0.1:8931", proxy: "http://127.0.0.1:3128", wantProxy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := CheckUpstream(tc.upstream, tc.proxy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("CheckUpstream(%q, %q) = %v, want error %q", tc.upstream, tc.proxy, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q repeats a password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CheckUpstream(%q, %q) = %v", tc.upstream, tc.proxy, err)
			}
			if (p != nil) != tc.wantProxy {
				t.Errorf("proxy = %v, want one: %v", p, tc.wantProxy)
			}
		})
	}
}

// countingProxy is an HTTP proxy that counts what reaches it and refuses it all.
func countingProxy(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "proxy says no", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// dialRecorder replaces a transport's dialer: it records each address and dials only addrs in
// allow (the test's own servers), so the test never reaches beyond loopback.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
	allow map[string]bool
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	if !d.allow[addr] {
		return nil, errors.New("test dialer: no network")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *dialRecorder) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

// TestUpstreamIgnoresProxyEnvironment: with HTTPS_PROXY and HTTP_PROXY pointing at a proxy, the
// upstream transport still goes straight to the upstream; only --upstream-proxy sends it through
// one.
func TestUpstreamIgnoresProxyEnvironment(t *testing.T) {
	proxy, hits := countingProxy(t)
	proxyAddr := strings.TrimPrefix(proxy.URL, "http://")
	for _, v := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"} {
		t.Setenv(v, proxy.URL)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")

	call := func(c *http.Client) {
		req, _ := http.NewRequest(http.MethodPost, "https://api.scavio.test/api/v1/search", strings.NewReader(`{}`))
		req.Header.Set("x-api-key", "sk_test_proxy_canary")
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}

	c := meteredUpstreamClient(nil)
	tr := c.Transport.(meteredTransport).next.(*http.Transport)
	if tr.Proxy != nil {
		t.Fatal("upstream transport has a Proxy function without --upstream-proxy")
	}
	rec := &dialRecorder{allow: map[string]bool{proxyAddr: true}}
	tr.DialContext = rec.dial
	call(c)
	if got := rec.dialed(); len(got) != 1 || got[0] != "api.scavio.test:443" {
		t.Errorf("dialed %v, want the upstream itself", got)
	}
	if hits.Load() != 0 {
		t.Errorf("the proxy from the environment saw %d requests", hits.Load())
	}

	// --upstream-proxy: the call goes to the named proxy (a CONNECT: the key stays inside TLS).
	pu, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	c = meteredUpstreamClient(pu)
	tr = c.Transport.(meteredTransport).next.(*http.Transport)
	rec = &dialRecorder{allow: map[string]bool{proxyAddr: true}}
	tr.DialContext = rec.dial
	call(c)
	if got := rec.dialed(); len(got) != 1 || got[0] != proxyAddr {
		t.Errorf("with --upstream-proxy dialed %v, want the proxy %s", got, proxyAddr)
	}
	if hits.Load() != 1 {
		t.Errorf("--upstream-proxy: the proxy saw %d requests, want 1", hits.Load())
	}
}

// A proxy's password is a secret, and brokerd's command line is readable by every local user
// (/proc/PID/cmdline, the unit's ExecStart=): --upstream-proxy-auth-file carries USER:PASSWORD
// instead, read with the keyset file's checks, and the proxy gets it (Proxy-Authorization on the
// CONNECT). A password left in --upstream-proxy still works but draws a warning; no error or log
// line repeats it.
func TestUpstreamProxyAuthFile(t *testing.T) {
	const pass = "pr0xy-s3cret"
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("auth", "alice:"+pass+"\n", 0o600)
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))

	// The file's user and password reach the proxy.
	var seen atomic.Value
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Proxy-Authorization"))
		http.Error(w, "proxy says no", http.StatusBadGateway)
	}))
	t.Cleanup(proxy.Close)
	p, err := CheckUpstream("https://api.scavio.test", proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	if p, err = proxyWithAuth(p, good, log); err != nil {
		t.Fatal(err)
	}
	c := meteredUpstreamClient(p)
	req, _ := http.NewRequest(http.MethodPost, "https://api.scavio.test/api/v1/search", strings.NewReader(`{}`))
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
	}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:"+pass))
	if got, _ := seen.Load().(string); got != want {
		t.Errorf("the proxy got Proxy-Authorization %q, want %q", got, want)
	}

	for _, tc := range []struct {
		name, proxy, file, wantErr, wantLog string
	}{
		{name: "password in the URL warns", proxy: "http://alice:" + pass + "@proxy.corp:3128", wantLog: "--upstream-proxy-auth-file"},
		{name: "user alone in the URL is quiet", proxy: "http://alice@proxy.corp:3128"},
		{name: "file without a proxy", file: good, wantErr: "needs --upstream-proxy"},
		{name: "user in both", proxy: "http://bob@proxy.corp:3128", file: good, wantErr: "in the file only"},
		{name: "file others can read", proxy: "http://proxy.corp:3128", file: write("open", "alice:"+pass, 0o644), wantErr: "chmod 600"},
		{name: "no colon", proxy: "http://proxy.corp:3128", file: write("nocolon", pass+"\n", 0o600), wantErr: "USER:PASSWORD on one line"},
		{name: "two lines", proxy: "http://proxy.corp:3128", file: write("twolines", "alice:"+pass+"\nmore\n", 0o600), wantErr: "USER:PASSWORD on one line"},
		{name: "no user", proxy: "http://proxy.corp:3128", file: write("nouser", ":"+pass, 0o600), wantErr: "USER:PASSWORD on one line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logtest.Buffer{}
			var p *url.URL
			if tc.proxy != "" {
				var err error
				if p, err = CheckUpstream("https://api.scavio.dev", tc.proxy); err != nil {
					t.Fatal(err)
				}
			}
			_, err := proxyWithAuth(p, tc.file, slog.New(slog.NewTextHandler(logs, nil)))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("proxyWithAuth: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("proxyWithAuth: %v, want error %q", err, tc.wantErr)
			case err != nil && strings.Contains(err.Error(), pass):
				t.Errorf("error %q repeats the password", err)
			}
			if got := logs.String(); (tc.wantLog != "") != strings.Contains(got, "WARN") || !strings.Contains(got, tc.wantLog) || strings.Contains(got, pass) {
				t.Errorf("log %q, want a warning naming %q only when the URL holds a password, never the password", got, tc.wantLog)
			}
		})
	}
}
