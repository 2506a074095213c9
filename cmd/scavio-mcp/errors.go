package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/credbroker/credbroker/client"
)

// mintAdvice is what to do about a token brokerd refuses. The agent cannot fix it; the user can
// pass it on to whoever runs brokerd.
const mintAdvice = "Retrying will not help: ask the operator of brokerd to mint a new token " +
	"(`brokerctl token mint --tools web_search,google_search --ttl 24h`), put it in CREDBROKER_TOKEN " +
	"or the --token-file of this MCP server's configuration, and restart the server."

// attestAdvice is what to do when brokerd refuses to attest this server (no token configured).
const attestAdvice = "Retrying will not help: ask the operator of brokerd to register this server " +
	"(`brokerctl workload add scavio-mcp --tools web_search,google_search --uid UID --exe PATH`; the message above " +
	"names what did not match), or configure a token in CREDBROKER_TOKEN or --token-file."

// attestationRefused reports whether a PermissionDenied message is FetchToken's refusal.
func attestationRefused(msg string) bool {
	return strings.Contains(msg, "workload registration") || strings.Contains(msg, "cannot attest")
}

// toolErrorText turns a failed Search into the text of an isError tool result. brokerd's messages
// already name the cause and, where one exists, the operator command that fixes it (`brokerctl
// rotate …`, `brokerctl credential put …`, "retry after 7s"), so they are passed through; the code
// decides who must act, which is what the agent needs to know. The messages never carry a secret.
//
// brokerd's reason (google.rpc.ErrorInfo) refines the advice where the code alone cannot tell (a
// rate limit from spent credits), and its RetryInfo says how long to wait; both are appended so an
// agent can act on them without parsing the message.
func toolErrorText(tool string, err error) string {
	text := adviceText(tool, err)
	var e *client.Error
	if !errors.As(err, &e) {
		return text
	}
	if d, ok := e.RetryDelay(); ok {
		text += fmt.Sprintf(" Retry after %s.", roundUp(d))
	}
	if r := e.Reason(); r != "" {
		text += " [reason: " + r + "]"
	}
	return text
}

// roundUp rounds a wait up to whole seconds (a client back too early is refused again).
func roundUp(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return (d + time.Second - 1) / time.Second * time.Second
}

func adviceText(tool string, err error) string {
	msg := err.Error()
	var reason string
	var e *client.Error
	if errors.As(err, &e) {
		reason = e.Reason()
	}
	switch reason {
	case "UPSTREAM_OUT_OF_CREDITS":
		return fmt.Sprintf("the search account is out of credits: %s. Retrying will not help: tell the user so the operator can add credits.", msg)
	case "BUDGET_EXHAUSTED", "CREDENTIAL_CEILING_REACHED":
		return fmt.Sprintf("the search budget is spent: %s. Calls succeed again when it resets (see below); tell the user if "+
			"they cannot wait, so the operator can raise it.", msg)
	case "RATE_LIMITED", "UPSTREAM_RATE_LIMITED":
		return fmt.Sprintf("the search is rate limited: %s. wait the time given before calling again.", msg)
	}
	switch {
	case errors.Is(err, client.ErrUntrustedServer):
		return fmt.Sprintf("nothing was sent: %s. Retrying will not help; tell the user, so they can check who serves the socket "+
			"and, if it is brokerd, set CREDBROKER_SERVER_UID to its uid in this MCP server's configuration.", msg)
	case errors.Is(err, client.ErrSocketDenied):
		return fmt.Sprintf("this MCP server may not connect to brokerd: %s. Retrying will not help; tell the user, so the "+
			"operator can add the user it runs as to the socket's group.", msg)
	case errors.Is(err, client.ErrUnauthenticated):
		return fmt.Sprintf("brokerd refused the broker token: %s. %s", msg, mintAdvice)
	case errors.Is(err, client.ErrPermissionDenied) && attestationRefused(msg):
		return fmt.Sprintf("brokerd gives this MCP server no token: %s. %s", msg, attestAdvice)
	case errors.Is(err, client.ErrPermissionDenied):
		return fmt.Sprintf("the broker token is not scoped for %s: %s. Use another tool, or ask the operator of brokerd "+
			"to mint a token that includes it (`brokerctl token mint --tools %s ...`).", tool, msg, tool)
	case errors.Is(err, client.ErrInvalidArgument):
		return fmt.Sprintf("invalid arguments for %s: %s. Correct the arguments and call again.", tool, msg)
	case errors.Is(err, client.ErrFailedPrecondition):
		return fmt.Sprintf("brokerd cannot run %s until its operator acts: %s. Retrying will not help; tell the user "+
			"so they can pass this on to the operator.", tool, msg)
	case errors.Is(err, client.ErrResponseTooLarge):
		return fmt.Sprintf("the answer for %s was too large to receive: %s. Call again asking for fewer results.", tool, msg)
	case errors.Is(err, client.ErrResourceExhausted):
		return fmt.Sprintf("the search quota is exhausted: %s. If this is a rate limit, wait the time given "+
			"(\"retry after …\", else a minute) before calling again; if the account is out of credits, "+
			"retrying will not help: tell the user so the operator can add credits.", msg)
	case errors.Is(err, client.ErrUnavailable):
		return fmt.Sprintf("search is unavailable right now: %s. Try again later; if it keeps failing, tell the user "+
			"(brokerd may be stopped, or the search API down).", msg)
	case errors.Is(err, client.ErrDeadlineExceeded):
		return fmt.Sprintf("the search timed out: %s. Try again, perhaps later.", msg)
	case errors.Is(err, client.ErrCanceled):
		return "the search was cancelled: " + msg
	case errors.Is(err, client.ErrUnimplemented):
		return fmt.Sprintf("this brokerd does not support %s: %s. It is probably older than scavio-mcp; the operator "+
			"must upgrade it.", tool, msg)
	}
	return fmt.Sprintf("%s failed inside brokerd: %s. Try again later; if it keeps failing, tell the user so the "+
		"operator can check brokerd's log.", tool, msg)
}
