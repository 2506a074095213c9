package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// CheckUpstream validates --upstream-url and --upstream-proxy before anything starts, and returns
// the proxy URL (nil for none). Errors never repeat either URL: one may carry a password.
//
// An http:// upstream is refused unless its host is loopback: the key travels in a header, and in
// clear text it is read by anything on the path (a proxy above all). Loopback http is kept for the
// fake upstream of tests and the quickstart, and only without a proxy off this host.
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
	if strings.EqualFold(u.Scheme, "http") && !isLoopbackHost(p.Hostname()) {
		// An http:// call goes to the proxy whole, key header included (no CONNECT, no TLS), and
		// the proxy connects to the "loopback" upstream from its own side: the loopback exception
		// above holds only while the call stays on this host.
		return nil, fmt.Errorf("--upstream-url is http:// and --upstream-proxy %s is not a loopback host: the key would reach the proxy in clear text; use an https:// upstream or a loopback proxy", p.Host)
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
