package peercred

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestReadReportsOwnIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan AuthInfo, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
			close(done)
			return
		}
		_, info, err := TransportCredentials().ServerHandshake(c)
		if err != nil {
			t.Error(err)
		}
		c.Close()
		ai, _ := info.(AuthInfo)
		done <- ai
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := <-done
	if got.UID != uint32(os.Getuid()) || got.GID != uint32(os.Getgid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("got uid=%d gid=%d pid=%d, want %d %d %d", got.UID, got.GID, got.PID, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

func TestReadRefusesTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			defer c.Close()
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := TransportCredentials().ServerHandshake(c); err == nil {
		t.Fatal("TCP connection accepted")
	}
}
