// Package daemon runs brokerd: it loads the master keyset, opens the store, listens on the Unix
// socket and serves the gRPC API until its context ends, then drains calls and closes the
// database. It holds process wiring only; policy lives in broker, storage in store.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/connlimit"
	"github.com/credbroker/credbroker/broker/grpcapi"
	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/broker/upstream"
	"github.com/credbroker/credbroker/store"
)

// Config is brokerd's configuration after flags and environment are resolved.
type Config struct {
	Socket       string
	DB           string
	MasterKeyset string
	// MasterKeyURI names a KMS key holding the master key instead (broker/kms); exactly one of
	// MasterKeyset and MasterKeyURI is set.
	MasterKeyURI    string
	UpstreamURL     string
	AdminUIDs       []uint32
	AdminGIDs       []uint32
	SocketMode      os.FileMode
	SocketGroup     string
	MaxTTL          time.Duration
	ShutdownTimeout time.Duration
	// AuditRetention prunes audit records older than this (0 keeps everything).
	AuditRetention time.Duration
	NoReflection   bool
	// KeepVersions is how many versions of each credential are kept (0: 3). GraceWindow is how long
	// after a rotation a rejected current key falls back to the previous one (0: 10m; <0: off).
	KeepVersions int
	GraceWindow  time.Duration
	// Economics configures the result cache (broker.EconomicsConfig).
	Economics broker.EconomicsConfig
	// TokenCacheSize bounds the tokens kept decoded in memory (0: broker.DefaultTokenCacheSize).
	TokenCacheSize int

	// DefaultSocketSource says which rule chose Socket when no --socket or $CREDBROKER_SOCKET gave
	// one (client.DefaultSocketSource), for the start-up log; "" when the operator named the socket.
	DefaultSocketSource string

	// MaxConns caps open client connections, the last connlimit.DefaultReserve(MaxConns) of them
	// kept for admin uids; MaxConnsPerUID caps those of each non-admin uid (0: the defaults).
	MaxConns, MaxConnsPerUID int
	// IdleTimeout closes a connection with no call in flight for this long (0: 5m).
	IdleTimeout time.Duration
	// RefusalInterval is how often coalesced refusal counts are written (0: 1m; broker/refusals.go).
	RefusalInterval time.Duration

	// MetricsListen is the loopback host:port, or unix:PATH (a 0600 socket), for Prometheus
	// /metrics; "" serves none.
	// MetricsAllowNonLoopback permits any other TCP address.
	MetricsListen           string
	MetricsAllowNonLoopback bool
	// HTTPListen lists the Scavio-compatible HTTP front's listeners (--http-listen): unix:PATH or
	// a loopback host:port each (httpfront.go).
	HTTPListen []string
	Version    string
	Logger     *slog.Logger

	// UpstreamProxy is the proxy for upstream calls (--upstream-proxy); "" calls directly, whatever
	// HTTP(S)_PROXY says.
	UpstreamProxy string
	// UpstreamProxyAuthFile holds USER:PASSWORD for UpstreamProxy (--upstream-proxy-auth-file),
	// so the proxy's password need not be on the command line.
	UpstreamProxyAuthFile string
}

// Run serves until ctx is cancelled; a cancelled ctx is a clean stop and returns nil, also while
// brokerd is still starting.
func Run(ctx context.Context, cfg Config) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	serving := false
	defer func() {
		// A stop asked for while starting (systemctl stop during a slow KMS, a long re-wrap) is
		// what the operator wanted, not a failure: exit 0, so systemd does not mark the unit
		// failed; what it interrupted is logged.
		if !serving && stoppedWhileStarting(ctx, err) {
			log.Warn("stopped while starting", "interrupted", err)
			err = nil
		}
	}()
	for _, req := range []struct{ v, flag string }{
		{cfg.Socket, "--socket"}, {cfg.DB, "--db"}, {cfg.UpstreamURL, "--upstream-url"},
	} {
		if req.v == "" {
			return fmt.Errorf("%s is required", req.flag)
		}
	}
	// Before the first secret is read (the proxy's password, then the master key): a
	// non-dumpable process's memory is out of reach of other processes of its uid.
	if err := hardenProcess(); err != nil {
		return err
	}
	proxy, err := CheckUpstream(cfg.UpstreamURL, cfg.UpstreamProxy)
	if err != nil {
		return err
	}
	if proxy, err = proxyWithAuth(proxy, cfg.UpstreamProxyAuthFile, log); err != nil {
		return err
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o660
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	// SIGHUP is caught from here on: Go's default for it is to exit, and one sent while brokerd
	// starts (`kill -HUP`, a key rotation script) killed it half-way, maybe in the middle of a
	// re-wrap. It is answered with a reload once brokerd serves: the keyset file may have changed
	// after start-up read it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	earlyHUP := watchEarlyHUP(hup, log)
	defer earlyHUP.stop() // on an error return before the supervisor took over

	if (cfg.MasterKeyset == "") == (cfg.MasterKeyURI == "") {
		return errors.New("give exactly one of --master-keyset and --master-key-uri (the master key is a keyset file or a KMS key)")
	}
	// A KMS is reached (and self-tested) here, once; after start it is needed only to re-wrap.
	kek, err := openMasterKeyUnlessStopped(ctx, cfg.MasterKeyset, cfg.MasterKeyURI)
	if err != nil {
		return err
	}
	// On a fresh machine /var/lib/credbroker does not exist yet; under systemd StateDirectory=
	// has made it already, and an existing directory is never chmod-ed.
	if err := store.MkdirParent(cfg.DB); err != nil {
		return fmt.Errorf("--db: %w", err)
	}
	// A commit that failed but landed (a failed fdatasync) stops the store's writes; the daemon then
	// stops too, so systemd restarts it and the file is read again (fail-stop, as databases do).
	fatal := make(chan error, 1)
	onFatal := func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}
	st, err := store.Open(cfg.DB, kek.AEAD, store.Options{KeepVersions: cfg.KeepVersions, OnAuditCommit: metrics.ObserveAuditCommit, OnFatal: onFatal,
		OnAuditPrune: metrics.ObserveAuditPrune, OnAuditCheckpoint: metrics.ObserveAuditCheckpoint})
	if err != nil {
		if errors.Is(err, store.ErrWrongMasterKey) {
			return wrongKEKError(err, cfg.DB, kek)
		}
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close database", "err", err)
		}
	}()
	metrics.SetStoreCommits(st.LastTxID)
	// A keyset from `brokerctl keyset rotate` has a new primary, a KMS key may have a new version:
	// move the database's wrapping to it. This walks every credential version: bbolt panics on
	// damaged pages instead of returning an error, so refuse to start with a message rather than a
	// goroutine dump.
	mk := &masterKey{st: st, log: log}
	if err := damagedOnPanic(cfg.DB, func() (err error) {
		_, err = mk.afterOpen(ctx, kek)
		return err
	}); err != nil {
		return fmt.Errorf("re-wrap %s under the current key of %s: %w", cfg.DB, kek.Description, err)
	}

	up, err := upstream.New(upstream.Config{BaseURL: cfg.UpstreamURL, HTTPClient: meteredUpstreamClient(proxy)})
	if err != nil {
		return fmt.Errorf("--upstream-url: %w", err)
	}
	b, err := broker.New(broker.Config{Store: st, Upstream: up, Logger: log, MaxTTL: cfg.MaxTTL, Version: cfg.Version, GraceWindow: cfg.GraceWindow,
		Economics: cfg.Economics, TokenCacheSize: cfg.TokenCacheSize, MasterKey: mk})
	if err != nil {
		return err
	}
	// On every way out, before the store closes: searches settle what they spent (Drain). The
	// normal stop drains below, after the server stopped; this covers the error returns.
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		_ = b.Drain(dctx)
	}()

	// Tokens fetched by attestation before this start are bound to processes brokerd can no
	// longer watch: revoke them (their clients fetch new ones). Their watches end at stop.
	// One that cannot be written now (a full disk) is refused and retried in the background.
	if n, pending, err := b.RevokeProcessBound(ctx); err != nil {
		return fmt.Errorf("revoke process-bound tokens: %w", err)
	} else if n > 0 || pending > 0 {
		log.Info("revoked tokens bound to processes of the previous brokerd", "tokens", n, "refused_and_pending", pending)
	}
	defer b.StopWatching()

	admins := grpcapi.Admins{UIDs: append([]uint32{uint32(os.Geteuid())}, cfg.AdminUIDs...), GIDs: cfg.AdminGIDs}
	drainer := grpcapi.NewDrainer()
	srv, hs := grpcapi.NewServer(b, grpcapi.Options{Admins: admins, Logger: log, NoReflection: cfg.NoReflection,
		UnaryInterceptors: []grpc.UnaryServerInterceptor{metricsUnary}, Drainer: drainer, IdleTimeout: cfg.IdleTimeout})

	mlis, err := listenMetrics(cfg.MetricsListen, cfg.MetricsAllowNonLoopback, cfg.Socket)
	if err != nil {
		return err
	}
	stopMetrics := serveMetrics(mlis, cfg.Version, log)
	defer stopMetrics()
	hlis, err := listenHTTP(cfg.HTTPListen, cfg)
	if err != nil {
		return err
	}
	stopHTTP := serveHTTPFront(hlis, b, cfg, admins, log)
	defer func() { stopHTTP(time.Now().Add(cfg.ShutdownTimeout)) }() // on an error return; a no-op after the stop below
	lis, activated, err := openListener(cfg, log)
	if err != nil {
		return err
	}
	if !activated {
		defer os.Remove(cfg.Socket)
	}
	lis = limitConns(lis, cfg, admins, b)
	warnFDLimit(cfg.MaxConns, log)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	bgCtx, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	retentionDone, schedDone, refusalsDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { defer close(retentionDone); b.RunAuditRetention(bgCtx, cfg.AuditRetention, time.Hour) }()
	go func() { defer close(schedDone); b.RunScheduler(bgCtx) }() // rotation policies (broker/scheduler.go)
	go func() { defer close(refusalsDone); b.RunRefusalFlush(bgCtx, cfg.RefusalInterval) }()
	// All touch the store: they stop before the deferred st.Close runs. The server has stopped by
	// then, so the last flush keeps the counts of the final interval.
	defer func() {
		stopBackground()
		<-schedDone
		<-retentionDone
		<-refusalsDone
		b.FlushRefusals(context.Background())
	}()
	sup, err := startSupervisor(bgCtx, supervisorConfig{Log: log, Broker: b, Store: st, MasterKey: mk, Listener: lis,
		HUP: hup, ReloadAtStart: earlyHUP.stop()})
	if err != nil {
		srv.Stop()
		return err
	}
	defer sup.close()
	serving = true
	log.Info("brokerd serving", "socket", lis.Addr().String(), "db", cfg.DB, "upstream", cfg.UpstreamURL, "version", cfg.Version, "master_key", kek.Description,
		"caller_identity", callerIdentity())

	var stopErr error
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve %s: %w", cfg.Socket, err)
	case <-ctx.Done():
	case err := <-fatal:
		log.Error("stopping: the database reported a disk error after a commit became visible; restart brokerd so it reads the file again", "err", err)
		stopErr = fmt.Errorf("database write failed with its outcome in doubt (%v); brokerd stopped so it can be restarted", err)
	}
	log.Info("brokerd stopping: draining in-flight calls", "timeout", cfg.ShutdownTimeout)
	// One deadline for the whole drain: the HTTP front's requests, the gRPC calls and the searches
	// whose callers left all get until then, at the same time. One after the other, each with its
	// own --shutdown-timeout, a hung upstream made a stop take about three times as long, past
	// the unit's TimeoutStopSec= (systemd then kills brokerd mid-drain). Now a stop takes at most
	// --shutdown-timeout plus drainGrace.
	deadline := time.Now().Add(cfg.ShutdownTimeout)
	sup.stopping()
	hs.Shutdown()
	drainer.Stopping() // watch streams would hold the graceful stop for its whole timeout
	httpStopped := make(chan struct{})
	go func() {
		defer close(httpStopped)
		stopHTTP(deadline)
	}()
	stopGracefully(srv, drainer, deadline, log)
	<-httpStopped
	// Searches whose callers left may still be waiting for the upstream: they settle their
	// credits and audit records before the store closes, until the same deadline; then they are
	// cut off (and counted as charged).
	drainCtx, cancelDrain := context.WithDeadline(context.Background(), deadline)
	if err := b.Drain(drainCtx); err != nil {
		log.Warn("shutdown: searches still waiting for the upstream", "err", err)
	}
	cancelDrain()
	log.Info("brokerd stopped")
	return stopErr
}

// Default connection caps (brokerd --max-conns, --max-conns-per-uid).
const (
	DefaultMaxConns       = 1024
	DefaultMaxConnsPerUID = 32
	// FDHeadroom is the file descriptors brokerd needs beyond its client connections: the
	// database, the listeners, upstream and metrics connections, pidfds and /proc reads at
	// accept, and one pidfd per process-bound token (broker.MaxWatchedTokens). The open-file
	// limit should be at least --max-conns plus this (the unit's LimitNOFILE= is), so the cap
	// refuses a connection before accept(2) fails with EMFILE.
	FDHeadroom = 256 + broker.MaxWatchedTokens
)

// warnFDLimit logs when the open-file limit is below what --max-conns needs.
func warnFDLimit(maxConns int, log *slog.Logger) {
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	if want := uint64(maxConns + FDHeadroom); lim.Cur < want {
		log.Warn("the open-file limit is below --max-conns plus headroom: accept may fail (EMFILE) before the connection cap refuses anyone; raise LimitNOFILE= or lower --max-conns",
			"limit", lim.Cur, "max_conns", maxConns, "want_at_least", want)
	}
}

// limitConns applies the connection caps to lis; refusals are counted and audited, coalesced per
// uid like other refusals.
func limitConns(lis net.Listener, cfg Config, admins grpcapi.Admins, b *broker.Broker) net.Listener {
	total, perUID := cfg.MaxConns, cfg.MaxConnsPerUID
	if total <= 0 {
		total = DefaultMaxConns
	}
	if perUID <= 0 {
		perUID = DefaultMaxConnsPerUID
	}
	return connlimit.New(lis, connlimit.Config{
		PerUID: perUID, Total: total, Reserve: connlimit.DefaultReserve(total), IsAdmin: admins.IsAdmin,
		OnRefuse: func(p connlimit.Peer, reason string) {
			b.RecordRefusal(context.Background(), broker.CallRecord{
				Method: "connection", Code: "ResourceExhausted",
				Caller: broker.Caller{UID: p.UID, GID: p.GID, PID: p.PID, Known: p.Known},
			}, reason)
		},
		OnChange: func(open int) { metrics.Connections.Set(float64(open)) },
	})
}

// drainGrace is how long handlers get, once the drainer has cancelled them, to return their
// "shutting down" answer and write its audit record before the transport is cut. Handlers honour
// their context within milliseconds; this only bounds one that does not. abandonAfter is how long
// a stop then still waits for a handler whose connection was closed under it: gRPC's Stop does
// not end a handler, and one that never returns would otherwise hold the stop until systemd kills
// brokerd (TimeoutStopSec=). Variables for tests.
var (
	drainGrace   = 5 * time.Second
	abandonAfter = time.Second
)

// stopGracefully lets in-flight calls finish until deadline, then ends them with a clean
// Unavailable through the drainer, cuts off the connections of what still runs drainGrace later,
// and abandons what still runs abandonAfter after that (logged: its audit record may be missing).
func stopGracefully(srv *grpc.Server, drainer *grpcapi.Drainer, deadline time.Time, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	select {
	case <-done:
		return
	case <-timeout.C:
	}
	n := drainer.Drain()
	log.Warn("shutdown timeout reached; ending the remaining calls with Unavailable", "calls", n)
	select {
	case <-done:
	case <-time.After(drainGrace):
		log.Error("calls still running after being ended; closing their connections", "grace", drainGrace)
		srv.Stop()
		select {
		case <-done:
		case <-time.After(abandonAfter):
			log.Error("calls still running after their connections were closed; stopping without them (their audit records may be missing)")
		}
	}
}

// liveSocketError is listen's refusal of a socket something answers on.
type liveSocketError struct{ path string }

func (e *liveSocketError) Error() string {
	return fmt.Sprintf("socket %s is live: another brokerd is serving on it", e.path)
}

// listen creates the Unix socket at path with mode and group. A live socket at path means
// another daemon is serving: refuse. A stale one (nothing answers) is replaced. A directory another
// user could replace the socket in is refused (checkSocketDir).
func listen(path string, mode os.FileMode, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		var err error
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
		}
		// Clients in the socket group must be able to reach the socket inside the directory.
		// Without a group there is nothing to change, and no chown is made: the unit's seccomp
		// filter (~@privileged) fails every chown, even this no-op.
		if gid >= 0 {
			if err := os.Chown(dir, -1, gid); err != nil {
				return nil, fmt.Errorf("--socket-group %s: chown %s: %w", group, dir, err)
			}
		}
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket path %s exists and is not a socket; remove it or choose another --socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, &liveSocketError{path}
		}
		// Only a refused connection proves nobody listens. A full accept queue (EAGAIN), a
		// timeout or a permission error can be a live but busy brokerd, whose socket must
		// not be taken from it.
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("socket %s exists and cannot be probed (%v); if no brokerd is running, remove it", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	// Create the socket with no permissions for others, then open it up to exactly mode, so it is
	// never reachable with looser permissions than asked.
	old := syscall.Umask(0o177)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			lis.Close()
			return nil, fmt.Errorf("--socket-group %s: %w", group, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return lis, nil
}

func lookupGroup(g string) (int, error) {
	if gid, err := strconv.Atoi(g); err == nil {
		return gid, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("--socket-group %s: %w", g, err)
	}
	return strconv.Atoi(grp.Gid)
}

// damagedOnPanic runs fn, turning a panic from bbolt (its answer to damaged pages) into an error.
func damagedOnPanic(db string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s cannot be read (%v); restore it from a backup", store.ErrCorrupt, db, r)
		}
	}()
	return fn()
}

// openMasterKeyUnlessStopped is openMasterKey, given up when ctx ends. A KMS's self-test runs
// through tink.AEAD, which takes no context: against a KMS that does not answer, a SIGTERM waited
// for every call's own timeout (15 s per Vault attempt, 30 s per AWS or Cloud KMS call, three calls),
// past the unit's TimeoutStopSec=, and brokerd was killed. Nothing is open yet, so the call is
// simply left behind; the process exits.
func openMasterKeyUnlessStopped(ctx context.Context, path, uri string) (*kms.KEK, error) {
	type result struct {
		kek *kms.KEK
		err error
	}
	done := make(chan result, 1)
	go func() {
		k, err := openMasterKey(ctx, path, uri)
		done <- result{k, err}
	}()
	select {
	case r := <-done:
		return r.kek, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("opening the master key: %w", ctx.Err())
	}
}

// stoppedWhileStarting reports whether err, a start's failure, was caused by the stop ctx carries:
// only that is a clean stop. A real failure at the same moment (a damaged database, a failed
// re-wrap) still fails the start.
func stoppedWhileStarting(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// earlyHUP notes the SIGHUPs that arrive while brokerd starts, before the supervisor answers them.
type earlyHUP struct {
	quit, done chan struct{}
	once       sync.Once
	seen       bool
}

// watchEarlyHUP takes the SIGHUPs sent on hup until stop, logging each.
func watchEarlyHUP(hup <-chan os.Signal, log *slog.Logger) *earlyHUP {
	e := &earlyHUP{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		for {
			select {
			case <-hup:
				e.seen = true
				log.Info("SIGHUP while starting: the master key is reloaded once brokerd serves")
			case <-e.quit:
				return
			}
		}
	}()
	return e
}

// stop ends the watch and reports whether a SIGHUP arrived; later ones stay queued on hup.
func (e *earlyHUP) stop() bool {
	e.once.Do(func() { close(e.quit) })
	<-e.done
	return e.seen
}

// callerIdentity says how callers are identified on this kernel, for the start-up log line.
func callerIdentity() string {
	if peercred.PidfdSupported() {
		return "SO_PEERCRED uid/gid/pid, program named through SO_PEERPIDFD"
	}
	return "SO_PEERCRED uid/gid/pid (kernel has no SO_PEERPIDFD: programs are not named in the audit)"
}
