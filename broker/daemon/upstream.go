package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
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
	// What upstream.New refuses, refused here too: it runs only after the database is open.
	switch {
	case !strings.EqualFold(u.Scheme, "https") && !strings.EqualFold(u.Scheme, "http"):
		return nil, errors.New("--upstream-url must be an https:// URL, e.g. https://api.scavio.dev")
	case u.Host == "":
		return nil, errors.New("--upstream-url names no host; e.g. https://api.scavio.dev")
	case strings.EqualFold(u.Scheme, "http") && !isLoopbackHost(u.Hostname()):
		return nil, fmt.Errorf("--upstream-url: http:// is refused for %s, which is not a loopback host: the key would cross the network in clear text; use https://", hostOnly(u))
	case u.User != nil:
		return nil, errors.New("--upstream-url must not hold a user or password: the API key is stored with `brokerctl credential put`, and brokerd's command line is readable by every local user")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, errors.New("--upstream-url must not have a query or fragment; give the API's base URL, e.g. https://api.scavio.dev")
	}
	// The rest of what upstream.New refuses (a host that is only a port, an opaque URL), with
	// its own rule, so the two cannot drift apart.
	if _, err := upstream.ParseBaseURL(upstreamURL); err != nil {
		return nil, fmt.Errorf("--upstream-url: %w; e.g. https://api.scavio.dev", err)
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

// maxProxyAuthFile bounds what --upstream-proxy-auth-file may hold: a user and a password.
const maxProxyAuthFile = 4 << 10

// proxyWithAuth gives proxy (CheckUpstream's) the user and password of --upstream-proxy-auth-file,
// if given: a password in --upstream-proxy itself is on brokerd's command line, which every local
// user can read (/proc/PID/cmdline, and the unit file's ExecStart=), so it draws a warning. The
// file is read with the master keyset's checks (store.ReadSecretFile: a regular file, no group or
// other bits, owned by brokerd's uid or root) and holds USER:PASSWORD on one line. Neither the
// warning nor an error repeats the password.
func proxyWithAuth(proxy *url.URL, authFile string, log *slog.Logger) (*url.URL, error) {
	switch {
	case authFile == "":
		if proxy != nil && proxy.User != nil {
			if _, ok := proxy.User.Password(); ok {
				log.Warn("the --upstream-proxy password is on brokerd's command line, which every local user can read; move USER:PASSWORD to a file given with --upstream-proxy-auth-file")
			}
		}
		return proxy, nil
	case proxy == nil:
		return nil, errors.New("--upstream-proxy-auth-file needs --upstream-proxy")
	case proxy.User != nil:
		return nil, errors.New("--upstream-proxy names a user and --upstream-proxy-auth-file is given: keep USER:PASSWORD in the file only")
	}
	data, err := store.ReadSecretFile(authFile, "the --upstream-proxy-auth-file", maxProxyAuthFile)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	line := bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("\n")), []byte("\r"))
	user, pass, ok := bytes.Cut(line, []byte(":"))
	if !ok || len(user) == 0 || bytes.ContainsAny(line, "\r\n") {
		return nil, fmt.Errorf("the --upstream-proxy-auth-file %s must hold USER:PASSWORD on one line", authFile)
	}
	p := *proxy
	p.User = url.UserPassword(string(user), string(pass))
	return &p, nil
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
