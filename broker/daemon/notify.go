package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/store"
)

// readyTimeout bounds how long brokerd waits for its own socket to answer a health check before
// it gives up starting.
const readyTimeout = 10 * time.Second

// supervisor keeps systemd informed: READY=1 once the served socket answers a health check,
// STATUS= lines, WATCHDOG=1 only after a health check that passed and the audit writer answered, RELOADING=1/READY=1 around a
// SIGHUP reload of the master keyset, STOPPING=1 on shutdown. Without NOTIFY_SOCKET the
// notifications are no-ops but the readiness check and reloads still run.
type supervisor struct {
	log    *slog.Logger
	b      *broker.Broker
	st     *store.Store
	mk     *masterKey
	addr   string // the served socket, for STATUS and the self check
	notify bool
	conn   *grpc.ClientConn
	health healthpb.HealthClient
	hup    chan os.Signal
	done   chan struct{}
	// reloading is set while a reload runs (its STATUS= line is kept).
	reloading atomic.Bool
}

type supervisorConfig struct {
	Log       *slog.Logger
	Broker    *broker.Broker
	Store     *store.Store
	MasterKey *masterKey
	Listener  net.Listener
	// HUP receives SIGHUP (signal.Notify already called); nil: startSupervisor catches it.
	// ReloadAtStart reloads the master key right after READY=1, for a SIGHUP sent while starting.
	HUP           chan os.Signal
	ReloadAtStart bool
}

// startSupervisor waits until the server answers on its socket, tells systemd READY=1, and starts
// the watchdog and SIGHUP loops; they end with ctx. Call close when Run returns.
func startSupervisor(ctx context.Context, c supervisorConfig) (*supervisor, error) {
	addr := c.Listener.Addr().String()
	conn, err := grpc.NewClient("passthrough:///brokerd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		return nil, fmt.Errorf("health self-check client: %w", err)
	}
	s := &supervisor{
		log: c.Log, b: c.Broker, st: c.Store, mk: c.MasterKey, addr: addr,
		notify: os.Getenv("NOTIFY_SOCKET") != "", conn: conn, health: healthpb.NewHealthClient(conn),
		hup: c.HUP, done: make(chan struct{}),
	}
	if s.hup == nil {
		// Catch SIGHUP before READY=1: systemd may send a reload as soon as we are ready, and
		// Go's default for SIGHUP is to exit.
		s.hup = make(chan os.Signal, 1)
		signal.Notify(s.hup, syscall.SIGHUP)
	}

	if err := s.waitServing(ctx); err != nil {
		if ctx.Err() != nil {
			// Stopped while starting: no READY=1, and Run goes on to a clean stop.
			return s, nil
		}
		s.close()
		return nil, err
	}
	s.send(sddaemon.SdNotifyReady, s.statusLine())

	interval, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil {
		s.log.Warn("ignoring the systemd watchdog setting", "err", err)
		interval = 0
	}
	go s.loop(ctx, interval, c.ReloadAtStart)
	return s, nil
}

// close stops the loops and the self-check connection. SIGHUP stays caught until the process
// exits, so a reload sent during shutdown cannot kill a draining brokerd.
func (s *supervisor) close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.conn.Close()
}

// stopping tells systemd that brokerd is shutting down.
func (s *supervisor) stopping() {
	s.send(sddaemon.SdNotifyStopping, "STATUS=stopping: draining in-flight calls")
}

// send writes one notification; several assignments go in one datagram, newline-separated.
func (s *supervisor) send(lines ...string) {
	if !s.notify {
		return
	}
	if _, err := sddaemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		s.log.Warn("sd_notify failed", "err", err)
	}
}

// check asks our own server for its overall health, over the socket clients use, then asks the
// store's audit writer to answer: every audited call waits on it, and the health service answers
// SERVING without touching it, so a writer stuck in a commit would otherwise keep the watchdog
// fed while every call hangs. A writer that answers with a failure (a full disk) passes: brokerd
// recovers from that by itself, and a restart would not help.
func (s *supervisor) check(ctx context.Context) error {
	resp, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health is %s", resp.GetStatus())
	}
	if s.st != nil {
		if err := s.st.AuditWriterAnswers(ctx); err != nil {
			return fmt.Errorf("database: %w", err)
		}
	}
	return nil
}

func (s *supervisor) waitServing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		err := s.check(cctx)
		ccancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("brokerd does not answer health checks on its own socket %s: %w", s.addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// statusLine is the STATUS= assignment: where we serve and what needs attention.
// It is built only when systemd listens: counting is not free with 100k tokens.
func (s *supervisor) statusLine() string {
	if !s.notify {
		return ""
	}
	n, err := s.b.TokenCount()
	if err != nil {
		return "STATUS=serving on " + s.addr + "; status unavailable: " + oneLine(err.Error())
	}
	return fmt.Sprintf("STATUS=serving on %s; %d tokens; %d credentials due", s.addr, n, metrics.CredentialsDueCount())
}

// loop pings the watchdog at half its interval after a passing health check, and reloads the
// master keyset on SIGHUP. A failed check skips the ping: if the server stays unresponsive,
// systemd kills and restarts brokerd after WatchdogSec.
//
// Reloads run on a goroutine of their own, one at a time (a SIGHUP during a reload queues one
// more): a reload may wait minutes for a KMS whose calls take no context, and brokerd serves all
// the while, so the watchdog must not wait with it.
func (s *supervisor) loop(ctx context.Context, watchdog time.Duration, reloadFirst bool) {
	reloads := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			case <-reloads:
				s.reloading.Store(true)
				s.reload()
				s.reloading.Store(false)
			}
		}
	}()
	queueReload := func() {
		select {
		case reloads <- struct{}{}:
		default: // one is queued already: it reads the file as it is then
		}
	}
	if reloadFirst {
		queueReload()
	}
	var tick <-chan time.Time
	if watchdog > 0 {
		t := time.NewTicker(watchdog / 2)
		defer t.Stop()
		tick = t.C
		s.log.Info("systemd watchdog enabled", "interval", watchdog)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-tick:
			cctx, cancel := context.WithTimeout(ctx, watchdog/4)
			err := s.check(cctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("watchdog: health check failed; not notifying systemd", "err", err)
				}
				continue
			}
			if s.reloading.Load() {
				s.send(sddaemon.SdNotifyWatchdog) // STATUS= still says "reloading"
				continue
			}
			s.send(sddaemon.SdNotifyWatchdog, s.statusLine())
		case <-s.hup:
			queueReload()
		}
	}
}

// oneLine keeps a STATUS= value on one line: systemd splits assignments at newlines.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
