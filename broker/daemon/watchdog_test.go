package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker/kms"
	"github.com/credbroker/credbroker/store"
)

// The watchdog's check (and READY=1's) fails while the store's audit writer is stuck in a commit:
// every audited call waits on it, but the health service kept answering SERVING, so brokerd went on
// pinging systemd's watchdog while no call could finish, and was never restarted. A writer that
// answers again passes again.
func TestWatchdogCheckFailsWhileAuditWriterIsStuck(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	dir := t.TempDir()
	keysetPath := filepath.Join(dir, "master.json")
	if err := store.NewMasterKeyset(keysetPath); err != nil {
		t.Fatal(err)
	}
	kek, err := kms.OpenFile(keysetPath)
	if err != nil {
		t.Fatal(err)
	}
	// The commit hook runs on the writer goroutine: blocking it holds the writer mid-commit,
	// as an fsync that does not return would.
	var stuck atomic.Pointer[chan struct{}]
	entered := make(chan struct{}, 1)
	st, err := store.Open(filepath.Join(dir, "broker.db"), kek.AEAD, store.Options{OnAuditCommit: func(int, time.Duration, error) {
		if c := stuck.Load(); c != nil {
			entered <- struct{}{}
			<-*c
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer()) // SERVING, whatever the store does
	lis, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sup, err := startSupervisor(ctx, supervisorConfig{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Store: st, Listener: lis})
	if err != nil {
		t.Fatal(err)
	}
	defer sup.close()

	check := func(timeout time.Duration) error {
		cctx, ccancel := context.WithTimeout(context.Background(), timeout)
		defer ccancel()
		return sup.check(cctx)
	}
	if err := check(10 * time.Second); err != nil {
		t.Fatalf("check with a working store: %v", err)
	}

	release := make(chan struct{})
	var once sync.Once
	unstick := func() { stuck.Store(nil); once.Do(func() { close(release) }) }
	defer unstick() // before st.Close, which waits for the writer
	stuck.Store(&release)
	appended := make(chan error, 1)
	go func() {
		appended <- st.AppendAudit(context.Background(), store.AuditRecord{Method: "/test/Stuck", Code: "OK"})
	}()
	<-entered // the writer is inside its commit and will not leave it
	err = check(200 * time.Millisecond)
	if err == nil {
		t.Fatal("check passed while the audit writer was stuck in a commit: the watchdog would keep brokerd alive")
	}
	if !strings.Contains(err.Error(), "audit writer") {
		t.Fatalf("check error does not name the audit writer: %v", err)
	}

	unstick()
	if err := <-appended; err != nil {
		t.Fatalf("append after the writer was released: %v", err)
	}
	if err := check(10 * time.Second); err != nil {
		t.Fatalf("check after the writer answers again: %v", err)
	}
}
