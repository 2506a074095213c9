package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func writeKeys(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunRefuses(t *testing.T) {
	keys := writeKeys(t, "sk_test_a\n")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no keys file", nil, "--keys-file is required"},
		{"key on argv", []string{"--keys-file", keys, "sk_test_a"}, "unexpected arguments"},
		{"all interfaces", []string{"--keys-file", keys, "--listen", "0.0.0.0:0"}, "non-loopback"},
		{"empty host", []string{"--keys-file", keys, "--listen", ":0"}, "non-loopback"},
		{"hostname", []string{"--keys-file", keys, "--listen", "example.com:80"}, "non-loopback"},
		{"no port", []string{"--keys-file", keys, "--listen", "127.0.0.1"}, "missing port"},
		{"missing file", []string{"--keys-file", keys + ".nope"}, "no such file"},
		{"empty file", []string{"--keys-file", writeKeys(t, "# none\n\n")}, "holds no keys"},
		{"whitespace in key", []string{"--keys-file", writeKeys(t, "sk_test_a sk_test_secret\n")}, "must not contain whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run error = %v, want %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "sk_test_secret") {
				t.Errorf("error %q echoes a key", err)
			}
		})
	}
}

func TestRunServesReloadsAndStops(t *testing.T) {
	keysPath := writeKeys(t, "# test keys\nsk_test_a\n\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--keys-file", keysPath}, outW, io.Discard)
		outW.Close()
	}()

	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("reading first line: %v", err)
	}
	base, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok || !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("first line %q", line)
	}
	go io.Copy(io.Discard, outR)

	status := func(key string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/search", strings.NewReader(`{"query":"q"}`))
		req.Header.Set("x-api-key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("sk_test_a"); got != 200 {
		t.Fatalf("listed key: %d, want 200", got)
	}
	if got := status("sk_test_b"); got != 401 {
		t.Fatalf("unlisted key: %d, want 401", got)
	}

	// Rotation from a script: rewrite the file, SIGHUP.
	if err := os.WriteFile(keysPath, []byte("sk_test_b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for status("sk_test_b") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload the keys file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := status("sk_test_a"); got != 401 {
		t.Errorf("key removed from the file: %d, want 401", got)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v, want nil on shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
