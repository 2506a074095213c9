package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/daemon"
	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/cmd/internal/days"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

type flags struct {
	socket, db, masterKeyset, masterKeyURI, upstreamURL string
	adminUIDs, adminGIDs                                string
	socketMode, socketGroup                             string
	httpListen                                          []string
	maxTTL, shutdownTimeout                             time.Duration
	auditRetention                                      time.Duration
	noReflection                                        bool
	metricsListen                                       string
	metricsAllowNonLoopback                             bool
	logLevel                                            string

	graceWindow    time.Duration // rotation: see broker.DefaultGraceWindow
	keepVersions   int
	cacheTTL       string
	cacheSize      int64
	tokenCacheSize int

	upstreamProxy                string // "" = no proxy, whatever HTTP(S)_PROXY says
	upstreamProxyAuthFile        string // USER:PASSWORD for upstreamProxy, kept off argv
	maxConns, maxConnsPerUID     int    // connection caps (broker/connlimit)
	idleTimeout, refusalInterval time.Duration
}

// envOr returns the environment variable's value, or def.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// systemdPath joins name under the directory systemd passed in env, or returns "". systemd joins
// several StateDirectory=/RuntimeDirectory= entries with ':'; the first is ours.
func systemdPath(env, name string) string {
	if d, _, _ := strings.Cut(os.Getenv(env), ":"); d != "" {
		return filepath.Join(d, name)
	}
	return ""
}

func newCommand() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:   "brokerd",
		Short: "credbroker daemon: keeps API keys encrypted and calls the upstream for token holders",
		Long: `brokerd keeps upstream credentials encrypted at rest (Tink AEAD in a bbolt file), mints
short-lived scoped tokens and performs upstream calls itself, so MCP servers never hold a key.
It serves a gRPC API on a local Unix socket; drive it with brokerctl.`,
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			masterKeysetFromEnv := os.Getenv("CREDBROKER_MASTER_KEYSET") != ""
			cfg, log, err := f.config()
			if err != nil {
				return err
			}
			// The keyset path may come from the environment; don't pass it on to anything we start.
			os.Unsetenv("CREDBROKER_MASTER_KEYSET")
			os.Unsetenv("CREDBROKER_MASTER_KEY_URI")
			// A KMS key replaces the keyset file; the systemd credential default must not make
			// it "both". Naming both explicitly is an error (daemon.Run).
			if f.masterKeyURI != "" && !cmd.Flags().Changed("master-keyset") && !masterKeysetFromEnv {
				cfg.MasterKeyset = ""
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg.Logger = log
			if !cmd.Flags().Changed("socket") {
				// Only a fallback is logged: a path from --socket or $CREDBROKER_SOCKET was chosen
				// by the operator and is already in the "brokerd serving" line.
				if _, source := client.DefaultSocketSource(); source != "$CREDBROKER_SOCKET" {
					cfg.DefaultSocketSource = source
				}
			}
			return daemon.Run(ctx, cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "socket", client.DefaultSocket(), "Unix socket to serve on (env CREDBROKER_SOCKET)")
	fl.StringVar(&f.db, "db", envOr("CREDBROKER_DB", systemdPath("STATE_DIRECTORY", "broker.db")), "bbolt database file (env CREDBROKER_DB; default $STATE_DIRECTORY/broker.db)")
	fl.StringVar(&f.masterKeyset, "master-keyset", envOr("CREDBROKER_MASTER_KEYSET", systemdPath("CREDENTIALS_DIRECTORY", "master-keyset")),
		"master keyset file, mode 0600 (env CREDBROKER_MASTER_KEYSET; default $CREDENTIALS_DIRECTORY/master-keyset)")
	fl.StringVar(&f.masterKeyURI, "master-key-uri", envOr("CREDBROKER_MASTER_KEY_URI", ""),
		"KMS key holding the master key instead of a keyset file: "+strings.Join(kms.URIForms(), ", ")+" (Vault/OpenBao Transit: token from VAULT_TOKEN_FILE or $CREDENTIALS_DIRECTORY/vault-token) (env CREDBROKER_MASTER_KEY_URI)")
	fl.StringVar(&f.upstreamURL, "upstream-url", envOr("CREDBROKER_UPSTREAM_URL", "https://api.scavio.dev"), "Scavio API base URL (env CREDBROKER_UPSTREAM_URL)")
	fl.StringVar(&f.upstreamProxy, "upstream-proxy", "", "send upstream calls through this proxy (http://, https:// or socks5://host:port); without it HTTP_PROXY/HTTPS_PROXY are ignored")
	fl.StringVar(&f.upstreamProxyAuthFile, "upstream-proxy-auth-file", "", "file holding USER:PASSWORD for --upstream-proxy (mode 0600), so the password is not on the command line")
	fl.StringVar(&f.adminUIDs, "admin-uid", "", "comma-separated uids allowed to use the admin API (root and brokerd's own uid always are)")
	fl.StringVar(&f.adminGIDs, "admin-gid", "", "comma-separated gids allowed to use the admin API")
	fl.StringVar(&f.socketMode, "socket-mode", "0660", "socket file mode (octal)")
	fl.StringVar(&f.socketGroup, "socket-group", "", "group (name or gid) to own the socket, for clients")
	fl.DurationVar(&f.maxTTL, "max-ttl", 24*time.Hour, "longest token ttl MintToken accepts (longer requests are refused)")
	fl.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight calls may finish after SIGTERM")
	f.auditRetention = 30 * 24 * time.Hour
	fl.Var(days.Value{D: &f.auditRetention}, "audit-retention", "prune audit records older than this, e.g. 30d, 12h, 1d12h (0 keeps all); the chain stays verifiable")
	fl.BoolVar(&f.noReflection, "no-reflection", false, "do not register the gRPC reflection service")
	fl.StringVar(&f.metricsListen, "metrics-listen", envOr("CREDBROKER_METRICS_LISTEN", ""), "serve Prometheus /metrics on this loopback host:port, e.g. 127.0.0.1:9464 (readable by every local user), or on unix:PATH, a 0600 Unix socket (env CREDBROKER_METRICS_LISTEN; default off)")
	fl.StringArrayVar(&f.httpListen, "http-listen", nil, "also serve Scavio's REST API (POST /api/v1/search, /api/v1/google) with broker tokens as API keys on unix:/PATH (mode and group as --socket) or a loopback 127.0.0.1:PORT / [::1]:PORT; repeatable; anything else is refused")
	fl.BoolVar(&f.metricsAllowNonLoopback, "metrics-allow-non-loopback", false, "allow --metrics-listen on a non-loopback address")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.DurationVar(&f.graceWindow, "grace-window", 10*time.Minute, "after a rotation, retry a call the upstream rejects (401/403) once with the previous key for this long (0: off)")
	fl.StringVar(&f.cacheTTL, "cache-ttl", "10m", "how long identical searches are answered from the result cache: a duration, and/or TOOL=DURATION entries, comma-separated (0 = off), e.g. 10m,google_search=0")
	fl.Int64Var(&f.cacheSize, "cache-size", 16<<20, "result cache size bound in bytes (least recently used entries go first)")
	fl.IntVar(&f.tokenCacheSize, "token-cache-size", broker.DefaultTokenCacheSize, "tokens kept decoded in memory; others are read from the database on use (tokens whose rate limit is recovering are always kept)")
	fl.IntVar(&f.maxConns, "max-conns", daemon.DefaultMaxConns, "most client connections open at once; the last 1/16th (4 to 64) are kept for admin uids")
	fl.IntVar(&f.maxConnsPerUID, "max-conns-per-uid", daemon.DefaultMaxConnsPerUID, "most connections open at once from one non-admin uid (admin uids: no per-uid cap)")
	fl.DurationVar(&f.idleTimeout, "idle-timeout", grpcapi.DefaultIdleTimeout, "close a client connection with no call in flight for this long (clients reconnect on their next call)")
	fl.DurationVar(&f.refusalInterval, "refusal-interval", broker.DefaultRefusalInterval, "refusals without a valid token are audited once per uid and reason, then as one record with a count per interval this long")
	fl.IntVar(&f.keepVersions, "keep-versions", 3, "versions of each credential kept for rollback, the current one included")
	return cmd
}

func (f *flags) config() (daemon.Config, *slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.logLevel)); err != nil {
		return daemon.Config{}, nil, fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if _, err := daemon.CheckUpstream(f.upstreamURL, f.upstreamProxy); err != nil {
		return daemon.Config{}, nil, err
	}
	mode, err := strconv.ParseUint(f.socketMode, 8, 32)
	if err != nil || mode > 0o777 {
		return daemon.Config{}, nil, fmt.Errorf("--socket-mode %q: want an octal mode such as 0660", f.socketMode)
	}
	uids, err := parseIDs("--admin-uid", f.adminUIDs)
	if err != nil {
		return daemon.Config{}, nil, err
	}
	gids, err := parseIDs("--admin-gid", f.adminGIDs)
	if err != nil {
		return daemon.Config{}, nil, err
	}
	if f.maxTTL <= 0 {
		return daemon.Config{}, nil, fmt.Errorf("--max-ttl must be positive")
	}
	if f.keepVersions < 2 || f.keepVersions > 100 {
		return daemon.Config{}, nil, fmt.Errorf("--keep-versions must be between 2 and 100 (rollback and the grace fallback need the previous version)")
	}
	econ, err := parseCacheTTL(f.cacheTTL)
	if err != nil {
		return daemon.Config{}, nil, err
	}
	if f.cacheSize <= 0 {
		return daemon.Config{}, nil, fmt.Errorf("--cache-size must be positive (turn the cache off with --cache-ttl 0)")
	}
	econ.CacheBytes = f.cacheSize
	if f.tokenCacheSize < 1 {
		return daemon.Config{}, nil, fmt.Errorf("--token-cache-size must be at least 1")
	}
	if f.maxConns < 16 {
		return daemon.Config{}, nil, fmt.Errorf("--max-conns must be at least 16")
	}
	if f.maxConnsPerUID < 1 || f.maxConnsPerUID > f.maxConns {
		return daemon.Config{}, nil, fmt.Errorf("--max-conns-per-uid must be between 1 and --max-conns (%d)", f.maxConns)
	}
	if f.shutdownTimeout <= 0 {
		return daemon.Config{}, nil, fmt.Errorf("--shutdown-timeout must be positive, e.g. 10s (in-flight calls get this long after SIGTERM; keep it under the unit's TimeoutStopSec= minus 6s)")
	}
	if f.idleTimeout <= 0 {
		return daemon.Config{}, nil, fmt.Errorf("--idle-timeout must be positive")
	}
	if f.refusalInterval < time.Second {
		return daemon.Config{}, nil, fmt.Errorf("--refusal-interval must be at least 1s")
	}
	grace := f.graceWindow
	switch {
	case grace < 0:
		return daemon.Config{}, nil, fmt.Errorf("--grace-window must not be negative (0 turns the fallback off)")
	case grace == 0:
		grace = -1 // daemon.Config: negative is off, 0 the default
	}
	return daemon.Config{
		Socket: f.socket, DB: f.db, MasterKeyset: f.masterKeyset, MasterKeyURI: f.masterKeyURI, UpstreamURL: f.upstreamURL,
		AdminUIDs: uids, AdminGIDs: gids, SocketMode: os.FileMode(mode), SocketGroup: f.socketGroup,
		MaxTTL: f.maxTTL, ShutdownTimeout: f.shutdownTimeout, AuditRetention: f.auditRetention, NoReflection: f.noReflection, Version: version,
		MetricsListen: f.metricsListen, MetricsAllowNonLoopback: f.metricsAllowNonLoopback, HTTPListen: f.httpListen,
		GraceWindow: grace, KeepVersions: f.keepVersions, Economics: econ,
		TokenCacheSize: f.tokenCacheSize, UpstreamProxy: f.upstreamProxy, UpstreamProxyAuthFile: f.upstreamProxyAuthFile,
		MaxConns: f.maxConns, MaxConnsPerUID: f.maxConnsPerUID, IdleTimeout: f.idleTimeout, RefusalInterval: f.refusalInterval,
	}, log, nil
}

func parseIDs(flag, s string) ([]uint32, error) {
	var out []uint32
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		n, err := strconv.ParseUint(part, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a numeric id", flag, part)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// parseCacheTTL reads --cache-ttl: a default duration and TOOL=DURATION overrides; 0 turns caching
// off (for everything or for one tool).
func parseCacheTTL(s string) (broker.EconomicsConfig, error) {
	e := broker.EconomicsConfig{CacheTTL: map[string]time.Duration{}}
	off := func(d time.Duration) time.Duration {
		if d == 0 {
			return -1 // EconomicsConfig: negative is off, zero the default
		}
		return d
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		tool, ds, per := strings.Cut(part, "=")
		if !per {
			ds, tool = tool, ""
		}
		d, err := time.ParseDuration(ds)
		if err != nil || d < 0 {
			return e, fmt.Errorf("--cache-ttl %q: want a duration such as 10m, or TOOL=DURATION", part)
		}
		if tool == "" {
			e.DefaultCacheTTL = off(d)
			continue
		}
		if _, ok := broker.LookupTool(tool); !ok {
			return e, fmt.Errorf("--cache-ttl: unknown tool %q; known tools: %s", tool, strings.Join(broker.ToolNames(), ", "))
		}
		e.CacheTTL[tool] = off(d)
	}
	return e, nil
}
