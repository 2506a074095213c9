// Command brokerctl is the operator CLI for brokerd: it creates the master keyset, stores and
// rotates credentials, mints and revokes tokens, and runs searches for testing.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(newApp(os.Stdin, os.Stdout, os.Stderr)).ExecuteContext(ctx)
	stop()
	var child childExit
	if errors.As(err, &child) {
		os.Exit(int(child)) // `brokerctl exec`: the child's status, already reported by the child
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "brokerctl: "+errorLine(err))
		os.Exit(1)
	}
}
