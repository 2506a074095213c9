// Command brokerbench measures what brokerd costs on top of the hop it adds. In one invocation it
// drives the same fast fake upstream three ways, side by side, at several concurrencies and
// upstream delays:
//
//	direct   HTTP POST straight to the fake with the key (what an MCP server does without a broker)
//	floor    a minimal gRPC server on a Unix socket that makes the same upstream call and nothing
//	         else (no token, no decrypt, no audit): the physical limit of any gRPC broker here
//	brokerd  the real brokerd binary: real bbolt file, real keyset, a real token, audit on
//
// and reports req/s, p50/p90/p99 and CPU seconds per 1,000 requests of each process, the ratios
// brokerd/floor and brokerd/direct, MintToken throughput, 100k-token scale (start-to-ready, RSS,
// paged ListTokens), optionally ghz's view of the same load, and a CPU profile of brokerd's
// daemon.Run under load. Every server runs in its own process (brokerbench re-executes itself in
// the hidden modes serve-upstream, serve-floor and serve-brokerd), so CPU accounting is per process.
//
//	brokerbench [--duration 5s] [--conc 1,16,64] [--delays 0,50ms] [--brokerd PATH] [--json FILE] [--markdown FILE]
//
// It is a measurement tool, never part of CI: numbers depend on the machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "brokerbench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(args) > 0 {
		switch args[0] {
		case "serve-upstream":
			return serveUpstream(ctx, args[1:])
		case "serve-floor":
			return serveFloor(ctx, args[1:])
		case "serve-brokerd":
			return serveBrokerd(ctx, args[1:])
		}
	}
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	return bench(ctx, cfg)
}
