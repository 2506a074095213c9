package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/credbroker/credbroker/client"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// whoAmITimeout bounds the start-up check: an MCP client waits for the server to answer initialize,
// and a broker that cannot answer WhoAmI this fast is reported by the tool calls instead.
const whoAmITimeout = 3 * time.Second

const tokenEnv = "CREDBROKER_TOKEN"

// run serves MCP on stdin/stdout until the client closes stdin or ctx is cancelled. stderr gets the
// log: stdout belongs to the protocol.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("scavio-mcp", flag.ContinueOnError)
	// The flag package would print a parse error itself, and main prints it again: keep only
	// main's line, after the usage.
	fs.SetOutput(io.Discard)
	socket := fs.String("socket", client.DefaultSocket(), "brokerd's Unix socket (env CREDBROKER_SOCKET)")
	tokenFile := fs.String("token-file", "", "file holding the broker token (default: the "+tokenEnv+" environment variable)")
	logLevel := fs.String("log-level", "info", "log level on stderr: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fs.SetOutput(stderr)
		defer fs.SetOutput(io.Discard)
		fmt.Fprintf(stderr, `Usage: scavio-mcp [--socket PATH] [--token-file FILE]

scavio-mcp is an MCP server on stdio offering web_search and google_search. It searches through
brokerd, which holds the Scavio API key. With no token configured it holds no secret at all:
brokerd identifies it from the socket and hands it short-lived tokens, renewed in the background,
once the operator has registered it:

  brokerctl workload add scavio-mcp --tools web_search,google_search --uid $(id -u) \
      --exe $(command -v scavio-mcp) --pin-exe

Or a broker token, read from $%s or --token-file (never from the command line). It sends nothing
to a socket served by another uid than root, its own or one in $CREDBROKER_SERVER_UID.

  brokerctl token mint --tools web_search,google_search --ttl 24h --label my-agent

Flags:
`, tokenEnv)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		// Don't echo the arguments: a token pasted on the command line is the likely mistake.
		return fmt.Errorf("scavio-mcp takes no arguments, only flags (%d given); the token comes from $%s or --token-file", fs.NArg(), tokenEnv)
	}
	if *showVersion {
		fmt.Println("scavio-mcp", version)
		return nil
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))

	var b *backend
	tok, err := readToken(*tokenFile, log)
	if err != nil {
		log.Error("no usable broker token; every tool call will fail until this is fixed", "err", err)
		b = &backend{unusable: fmt.Sprintf("cannot read the broker token: %v. The operator must fix --token-file in this MCP server's configuration and restart it.", err), tools: toolNames()}
	} else {
		b = connect(ctx, log, *socket, tok)
	}
	if b.client != nil {
		defer b.client.Close()
	}

	err = newServer(b, log).Run(ctx, &mcp.StdioTransport{})
	if ctx.Err() != nil {
		// SIGINT/SIGTERM: a clean stop.
		log.Info("stopped by signal")
		return nil
	}
	return err
}

// readToken returns the token from file, or from $CREDBROKER_TOKEN when file is empty. An empty
// result with a nil error means no token was configured.
func readToken(file string, log *slog.Logger) (string, error) {
	env := strings.TrimSpace(os.Getenv(tokenEnv))
	// Nothing this process starts needs the token; keep it out of any child's environment.
	os.Unsetenv(tokenEnv)
	if file == "" {
		return env, nil
	}
	// Read as the client reads one (bounded, a FIFO without a writer not waited on: the MCP client
	// would wait for initialize meanwhile).
	data, err := client.ReadTokenFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", file)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the token file is readable by other users; chmod 600 it", "file", file, "mode", fi.Mode().Perm().String())
	}
	return tok, nil
}

// backend is what the tools call: a broker client, or the reason there is none.
type backend struct {
	client *client.Client
	// unusable, when set, is the text every tool call fails with; brokerd is not called.
	unusable string
	// tools are the tools to offer, in toolNames order.
	tools []string
}

// connect builds the client and asks brokerd which tools the token allows. It never fails: a
// missing token makes every call fail with advice, and a token brokerd cannot vouch for now
// (unreachable, expired, revoked) gets every tool, so that each call reports brokerd's answer at
// the time, which may have changed (brokerd started, say).
func connect(ctx context.Context, log *slog.Logger, socket, token string) *backend {
	var opts []client.Option
	if token != "" {
		opts = append(opts, client.WithToken(token))
	} else {
		// No secret configured: the client fetches tokens by attestation (brokerd identifies this
		// process from the socket and matches an operator's `brokerctl workload add`) and renews
		// them in the background. Each token dies with this process.
		log.Info("no broker token configured: fetching tokens by attestation (the operator registers this server with `brokerctl workload add`)")
	}
	c, err := client.New(socket, opts...)
	if err != nil {
		log.Error("cannot use the broker token", "err", err)
		return &backend{unusable: fmt.Sprintf("the broker token cannot be used: %v. %s", err, mintAdvice), tools: toolNames()}
	}

	wctx, cancel := context.WithTimeout(ctx, whoAmITimeout)
	defer cancel()
	who, err := c.WhoAmI(wctx)
	if err != nil {
		log.Warn("brokerd did not confirm the token at start; offering every tool, and each call will report why it fails",
			"socket", c.Socket(), "err", err)
		return &backend{client: c, tools: toolNames()}
	}
	var allowed []string
	for _, name := range toolNames() {
		if slices.Contains(who.GetTools(), name) {
			allowed = append(allowed, name)
		}
	}
	log.Info("connected to brokerd", "socket", c.Socket(), "token_id", who.GetTokenId(), "label", who.GetLabel(),
		"token_tools", who.GetTools(), "offering", allowed, "expires_at", who.GetExpiresAt().AsTime().Format(time.RFC3339))
	if len(allowed) == 0 {
		log.Warn("the token allows none of this server's tools; offering none", "server_tools", toolNames())
	}
	return &backend{client: c, tools: allowed}
}
