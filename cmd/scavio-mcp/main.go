// Command scavio-mcp is an MCP server on stdio that gives an agent Scavio web and Google search
// through brokerd. It holds a broker token and a socket path, never the Scavio API key: brokerd
// performs every upstream call. It is also the reference for MCP server authors who import client.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "scavio-mcp: %v\n", err)
		os.Exit(1)
	}
}
