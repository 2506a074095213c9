package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// CheckUpstream validates --upstream-url and --upstream-proxy before anything starts, and returns
// the proxy URL (nil for none). Errors never repeat either URL: one may carry a password.
//
// An http:// upstream is refused unless its host is loopback: the key travels in a header, and in
// clear text it is read by anything on the path (a proxy above all). Loopback http is kept for the
// fake upstream of tests and the quickstart.
func CheckUpstream(upstreamURL, proxy string) (*url.URL, error) {
	u, err := url.Parse(upstreamURL)
	if err != nil {
		return nil, errors.New("--upstream-url is not a valid URL")
	}
	if strings.EqualFold(u.Scheme, "http") && !isLoopbackHost(u.Hostname()) {
		return nil, fmt.Errorf("--upstream-url: http:// is refused for %s, which is not a loopback host: the key would cross the network in clear text; use https://", hostOnly(u))
	}
	if proxy == "" {
		return nil, nil
	}
	p, err := url.Parse(proxy)
	if err != nil {
		return nil, errors.New("--upstream-proxy is not a valid URL")
	}
	switch strings.ToLower(p.Scheme) {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, errors.New("--upstream-proxy must be an http://, https:// or socks5:// URL")
	}
	if p.Hostname() == "" || (p.Path != "" && p.Path != "/") || p.RawQuery != "" || p.Fragment != "" {
		return nil, errors.New("--upstream-proxy must be scheme://host:port, with no path or query")
	}
	return p, nil
}

// isLoopbackHost reports whether host is localhost or a loopback IP (127.0.0.0/8, ::1).
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hostOnly names u's host for an error message, without user info, path or query.
func hostOnly(u *url.URL) string {
	if u.Host == "" {
		return "an empty host"
	}
	return u.Host
}

// upstreamTransport is the transport for upstream calls. It never reads HTTP_PROXY, HTTPS_PROXY
// or NO_PROXY: a proxy variable in brokerd's environment (inherited from a shell, a unit's
// Environment=, a container image) would silently route every call, and its key, through the
// proxy. A proxy is used only when the operator names it with --upstream-proxy.
func upstreamTransport(proxy *url.URL) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 15 * time.Second,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
	}
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return t
}
