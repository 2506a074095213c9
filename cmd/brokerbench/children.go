package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// child is a server process brokerbench started: the fake upstream, the floor, brokerd, or the
// in-process daemon used for profiling.
type child struct {
	name  string
	cmd   *exec.Cmd
	lines chan string // stdout lines of brokerbench's own children
	done  chan struct{}
	err   error
	// metrics is brokerd's /metrics URL (empty for other children).
	metrics string
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// startChild starts bin with args, stderr to a log file in dir. The child gets SIGKILL if
// brokerbench dies first, so a crashed run leaves nothing listening.
func startChild(dir, name, bin string, args ...string) (*child, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody is waiting for this line
			}
		}
	}()
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	return c, nil
}

// startSelf re-executes brokerbench in a child mode and waits for its "ready ADDR" line.
func startSelf(dir, name string, args ...string) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	c, err := startChild(dir, name, self, args...)
	if err != nil {
		return nil, "", err
	}
	line, err := c.waitLine("ready ", 30*time.Second)
	if err != nil {
		c.stop()
		return nil, "", err
	}
	return c, strings.TrimPrefix(line, "ready "), nil
}

// waitLine waits for a stdout line starting with prefix.
func (c *child) waitLine(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line := <-c.lines:
			if strings.HasPrefix(line, prefix) {
				return line, nil
			}
		case <-c.done:
			return "", fmt.Errorf("%s exited (%v); see %s.log", c.name, c.err, c.name)
		case <-t.C:
			return "", fmt.Errorf("%s: no %q line within %s", c.name, prefix, timeout)
		}
	}
}

// stop sends SIGTERM and waits up to 15s, then kills.
func (c *child) stop() error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	var ee *exec.ExitError
	if errors.As(c.err, &ee) {
		return fmt.Errorf("%s: %v", c.name, c.err)
	}
	return c.err
}

// waitServing polls the gRPC health service on socket until it answers SERVING, with a fresh
// connection per attempt (a connection that failed to dial backs off for a second, which would
// hide the real readiness time). It returns when it answered.
func waitServing(ctx context.Context, socket string, c *child, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("%s exited before serving (%v); see %s.log", c.name, c.err, c.name)
		default:
		}
		if _, err := os.Stat(socket); err == nil && healthCheck(ctx, socket) {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("%s: not SERVING on %s within %s", c.name, socket, timeout)
}

func healthCheck(ctx context.Context, socket string) bool {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}
