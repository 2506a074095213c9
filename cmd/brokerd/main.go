// Command brokerd is the credbroker daemon: it holds upstream credentials encrypted at rest and
// performs tool calls for token holders over a local gRPC Unix socket.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "brokerd: %v\n", err)
		os.Exit(1)
	}
}
