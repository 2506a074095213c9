package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// parseRate parses N/PERIOD, e.g. 10/m or 100/1h.
func parseRate(s string) (uint32, time.Duration, error) {
	bad := fmt.Errorf("--rate %q: want N/PERIOD such as 10/m, 100/h or 5/30s", s)
	num, period, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, bad
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil || n == 0 {
		return 0, 0, bad
	}
	units := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour}
	per, ok := units[period]
	if !ok {
		if per, err = time.ParseDuration(period); err != nil || per <= 0 {
			return 0, 0, bad
		}
	}
	return uint32(n), per, nil
}

func newTokenInspectCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect ID",
		Short: "Show everything about a token except its secret",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				t, err := c.GetToken(ctx, tokenID(args[0]))
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(a.stdout, inspectJSON(t))
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
				row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
				row("id", t.GetId())
				row("state", tokenState(t, time.Now()))
				row("tools", strings.Join(t.GetTools(), ","))
				row("label", orDash(printable(t.GetLabel())))
				row("created", orDash(rfc3339(t.GetCreatedAt())))
				row("expires", orDash(rfc3339(t.GetExpiresAt())))
				row("uses", tokenUses(t))
				if t.GetMaxUses() > 0 {
					row("uses left", strconv.FormatUint(t.GetUsesLeft(), 10))
				}
				row("last used", orDash(rfc3339(t.GetLastUsedAt())))
				if t.GetRateLimit() > 0 {
					row("rate", fmt.Sprintf("%d per %s", t.GetRateLimit(), t.GetRatePeriod().AsDuration()))
				}
				if t.GetBudgetCredits() > 0 {
					row("budget", fmt.Sprintf("%d of %d credits spent this %s%s", t.GetBudgetSpent(), t.GetBudgetCredits(), t.GetBudgetPeriod(),
						overshoot(t.GetBudgetSpent(), t.GetBudgetCredits())))
				}
				if t.GetSharedCache() {
					row("result cache", "shared")
				}
				if t.BindUid != nil {
					row("bound to uid", strconv.FormatUint(uint64(t.GetBindUid()), 10))
				}
				row("minted by uid", strconv.FormatUint(uint64(t.GetMintedByUid()), 10))
				if t.GetRevoked() {
					row("revoked", rfc3339(t.GetRevokedAt()))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}

func inspectJSON(t *credbrokerv1.TokenInfo) map[string]any {
	out := map[string]any{
		"id": t.GetId(), "tools": t.GetTools(), "label": t.GetLabel(), "state": tokenState(t, time.Now()),
		"created_at": rfc3339(t.GetCreatedAt()), "expires_at": rfc3339(t.GetExpiresAt()),
		"max_uses": t.GetMaxUses(), "uses": t.GetUses(), "uses_left": t.GetUsesLeft(),
		"last_used_at": rfc3339(t.GetLastUsedAt()), "minted_by_uid": t.GetMintedByUid(), "revoked": t.GetRevoked(),
	}
	if t.BindUid != nil {
		out["bind_uid"] = t.GetBindUid()
	}
	if t.GetRateLimit() > 0 {
		out["rate_limit"], out["rate_period"] = t.GetRateLimit(), t.GetRatePeriod().AsDuration().String()
	}
	if t.GetBudgetCredits() > 0 {
		out["budget_credits"], out["budget_period"], out["budget_spent"] = t.GetBudgetCredits(), t.GetBudgetPeriod(), t.GetBudgetSpent()
	}
	out["shared_cache"] = t.GetSharedCache()
	return out
}
