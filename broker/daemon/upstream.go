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
