// Command fakescavio serves the fake Scavio API from broker/upstream/scaviotest on a loopback port,
// for the quickstart and for scripts that drive a real brokerd against it.
//
//	fakescavio --keys-file keys.txt [--listen 127.0.0.1:0]
//
// The first line on stdout is "listening on http://ADDR". Keys come only from the keys file (one per
// line, blank lines and #comments ignored), never from argv, where every user on the host could read
// them; rewriting the file and sending SIGHUP replaces the accepted set, which is how a script plays
// out a key rotation. It serves until SIGINT or SIGTERM and then exits 0. It refuses non-loopback
// addresses: anyone who can reach it could spend the test keys' "credits" and read what it records.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fakescavio:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakescavio", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "loopback `address` to listen on")
	keysFile := fs.String("keys-file", "", "`file` of accepted keys, one per line (required)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return errors.New("unexpected arguments; keys are read from --keys-file only")
	}
	if *keysFile == "" {
		return errors.New("--keys-file is required")
	}
	keys, err := readKeys(*keysFile)
	if err != nil {
		return err
	}
	if err := checkLoopback(*listen); err != nil {
		return err
	}

	// Signals are wired before the listening line is printed, so a script that reacts to that line
	// can never deliver a signal that still has its default (fatal) action.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("--listen %s resolved to non-loopback %s; refusing", *listen, ln.Addr())
	}

	fake := scaviotest.NewUnstartedHandler(keys...)
	srv := &http.Server{Handler: fake.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// os.Stdout is unbuffered, so this line is out as soon as Fprintf returns.
	if _, err := fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr()); err != nil {
		srv.Close()
		return err
	}
	fmt.Fprintf(stderr, "fakescavio: accepting %d key(s) from %s\n", len(keys), *keysFile)

	for {
		select {
		case err := <-served:
			return err
		case <-hup:
			keys, err := readKeys(*keysFile)
			if err != nil {
				fmt.Fprintf(stderr, "fakescavio: reload: %v; keeping the previous keys\n", err)
				continue
			}
			fake.SetKeys(keys...)
			fmt.Fprintf(stderr, "fakescavio: reloaded %d key(s)\n", len(keys))
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close()
			}
			return nil
		}
	}
}

// readKeys never echoes file contents in its errors: a malformed line may be a real key.
func readKeys(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var keys []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("%s:%d: a key must not contain whitespace", path, n)
		}
		keys = append(keys, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no keys", path)
	}
	return keys, nil
}

// checkLoopback refuses, before binding, any address that is not literally loopback or localhost.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--listen %q: refusing a non-loopback address; the fake accepts its keys from anyone who can reach it", addr)
}
