package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/cmd/internal/days"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// economicsAPI is the part of *client.Client behind credential limits and usage.
type economicsAPI interface {
	ListCredentials(context.Context) ([]*credbrokerv1.Credential, error)
	SetCredentialLimits(ctx context.Context, name string, l *credbrokerv1.CredentialLimits) (*credbrokerv1.Credential, error)
	Usage(ctx context.Context, req *credbrokerv1.UsageRequest) (*credbrokerv1.UsageResponse, error)
}

func (a *app) callEconomics(cmd *cobra.Command, fn func(context.Context, economicsAPI) error) error {
	return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
		e, ok := c.(economicsAPI)
		if !ok {
			return errors.New("internal error: this client cannot make limits or usage calls")
		}
		return fn(ctx, e)
	})
}

// limitFlags are `credential policy`'s spending-limit flags. Only the flags given change; the
// others keep their current value.
type limitFlags struct {
	rate, maxWait string
	burst         uint32
	monthly       uint64
	clearLimits   bool
}

func (l *limitFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&l.rate, "rate", "", "rate limit for the credential, shared by every token: N/PERIOD, e.g. 10/m (0 removes it)")
	f.Uint32Var(&l.burst, "burst", 0, "calls that may go at once after a quiet spell (with --rate)")
	f.StringVar(&l.maxWait, "max-wait", "", "longest a call waits for a rate-limit slot, besides its own deadline, e.g. 30s")
	f.Uint64Var(&l.monthly, "monthly-credits", 0, "credit ceiling per calendar month (0 removes it); status warns at 80%")
	f.BoolVar(&l.clearLimits, "clear-limits", false, "remove the rate limit and the monthly ceiling")
}

func (l *limitFlags) any(cmd *cobra.Command) bool {
	for _, n := range []string{"rate", "burst", "max-wait", "monthly-credits", "clear-limits"} {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// apply merges the flags that were given into cur.
func (l *limitFlags) apply(cmd *cobra.Command, cur *credbrokerv1.CredentialLimits) (*credbrokerv1.CredentialLimits, error) {
	if l.clearLimits {
		if l.anyExceptClear(cmd) {
			return nil, errors.New("--clear-limits cannot be combined with other limit flags")
		}
		return nil, nil
	}
	out := &credbrokerv1.CredentialLimits{}
	if cur != nil {
		out = proto.Clone(cur).(*credbrokerv1.CredentialLimits)
	}
	ch := cmd.Flags().Changed
	if ch("rate") {
		if l.rate == "0" {
			out.RateLimit, out.RatePeriod, out.Burst, out.MaxWait = 0, nil, 0, nil
		} else {
			n, per, err := parseRate(l.rate)
			if err != nil {
				return nil, err
			}
			out.RateLimit, out.RatePeriod = n, durationpb.New(per)
		}
	}
	if ch("burst") {
		out.Burst = l.burst
	}
	if ch("max-wait") {
		d, err := time.ParseDuration(l.maxWait)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("--max-wait %q: want a duration such as 30s", l.maxWait)
		}
		out.MaxWait = durationpb.New(d)
	}
	if ch("monthly-credits") {
		out.MonthlyCredits = l.monthly
	}
	return out, nil
}

func (l *limitFlags) anyExceptClear(cmd *cobra.Command) bool {
	for _, n := range []string{"rate", "burst", "max-wait", "monthly-credits"} {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// setLimits reads the credential's current limits, applies the flags and stores the result.
func (a *app) setLimits(cmd *cobra.Command, name string, l *limitFlags) error {
	return a.callEconomics(cmd, func(ctx context.Context, e economicsAPI) error {
		creds, err := e.ListCredentials(ctx)
		if err != nil {
			return err
		}
		var cur *credbrokerv1.CredentialLimits
		for _, c := range creds {
			if c.GetName() == name {
				cur = c.GetLimits()
			}
		}
		next, err := l.apply(cmd, cur)
		if err != nil {
			return err
		}
		c, err := e.SetCredentialLimits(ctx, name, next)
		if err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, describeLimits(c))
		return nil
	})
}

func describeLimits(c *credbrokerv1.Credential) string {
	l := c.GetLimits()
	if l == nil {
		return fmt.Sprintf("%s: no spending limits", c.GetName())
	}
	var parts []string
	if l.GetRateLimit() > 0 {
		p := fmt.Sprintf("rate %d per %s", l.GetRateLimit(), l.GetRatePeriod().AsDuration())
		if l.GetBurst() > 1 {
			p += fmt.Sprintf(", burst %d", l.GetBurst())
		}
		if l.GetMaxWait() != nil {
			p += fmt.Sprintf(", max wait %s", l.GetMaxWait().AsDuration())
		}
		parts = append(parts, p)
	}
	if l.GetMonthlyCredits() > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d monthly credits used%s", c.GetCreditsThisMonth(), l.GetMonthlyCredits(),
			overshoot(c.GetCreditsThisMonth(), l.GetMonthlyCredits())))
	}
	return fmt.Sprintf("%s: %s", c.GetName(), strings.Join(parts, "; "))
}

// overshoot says by how much the upstream's reported credits passed a budget (brokerd records
// them whole and refuses further calls until the period resets), or nothing.
func overshoot(spent, budget uint64) string {
	if budget == 0 || spent <= budget {
		return ""
	}
	return fmt.Sprintf(" (overshoot %d; refused until the period resets)", spent-budget)
}

// parseBudget parses N/d or N/m (also N/day, N/month).
func parseBudget(s string) (uint64, string, error) {
	bad := fmt.Errorf("--budget %q: want N/d or N/m (credits per day or month), e.g. 100/d", s)
	num, per, ok := strings.Cut(s, "/")
	if !ok {
		return 0, "", bad
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 {
		return 0, "", bad
	}
	switch per {
	case "d", "day":
		return n, "day", nil
	case "m", "mo", "month":
		return n, "month", nil
	}
	return 0, "", bad
}

func newUsageCmd(a *app) *cobra.Command {
	var (
		by, since string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "usage [--by token|credential] [--since T] [--json]",
		Short: "Calls, credits, cache hits and errors per token (with its label) or per credential",
		Long: `Sum tool calls from the audit log: calls, upstream credits spent, cache hits and errors, per token
(with its label) or per credential — the cost allocation of a shared key. The audit log's retention
(brokerd --audit-retention) bounds how far back it reaches.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &credbrokerv1.UsageRequest{By: by}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			return a.callEconomics(cmd, func(ctx context.Context, e economicsAPI) error {
				u, err := e.Usage(ctx, req)
				if err != nil {
					return err
				}
				if asJSON {
					rows := make([]map[string]any, 0, len(u.GetRows()))
					for _, r := range u.GetRows() {
						rows = append(rows, map[string]any{"key": r.GetKey(), "label": r.GetLabel(), "calls": r.GetCalls(),
							"credits": r.GetCredits(), "cache_hits": r.GetCacheHits(), "errors": r.GetErrors()})
					}
					return writeJSON(a.stdout, map[string]any{"by": by, "rows": rows, "credits_saved": u.GetCreditsSaved()})
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
				head := "TOKEN\tLABEL"
				if by == "credential" {
					head = "CREDENTIAL\t"
				}
				fmt.Fprintf(tw, "%s\tCALLS\tCREDITS\tCACHE HITS\tERRORS\n", head)
				for _, r := range u.GetRows() {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", r.GetKey(), orDash(printable(r.GetLabel())), r.GetCalls(), r.GetCredits(), r.GetCacheHits(), r.GetErrors())
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "credits saved by the cache: %d\n", u.GetCreditsSaved())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&by, "by", "token", "group by token or credential")
	cmd.Flags().StringVar(&since, "since", "", "only calls at or after T: RFC3339 time or a duration ago such as 24h")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}

// limitsJSON is a credential's spending limits in `credential list --json` and `status --json`.
type limitsJSON struct {
	RateLimit         uint32  `json:"rate_limit,omitempty"`
	RatePeriod        string  `json:"rate_period,omitempty"`
	RatePeriodSeconds float64 `json:"rate_period_seconds,omitempty"`
	Burst             uint32  `json:"burst,omitempty"`
	MaxWait           string  `json:"max_wait,omitempty"`
	MaxWaitSeconds    float64 `json:"max_wait_seconds,omitempty"`
	MonthlyCredits    uint64  `json:"monthly_credits,omitempty"`
	CreditsThisMonth  uint64  `json:"credits_this_month"`
}

// limitsOf returns c's limits for JSON, nil when it has none.
func limitsOf(c *credbrokerv1.Credential) *limitsJSON {
	l := c.GetLimits()
	if l == nil || (l.GetRateLimit() == 0 && l.GetMonthlyCredits() == 0) {
		return nil
	}
	out := &limitsJSON{RateLimit: l.GetRateLimit(), Burst: l.GetBurst(), MonthlyCredits: l.GetMonthlyCredits(), CreditsThisMonth: c.GetCreditsThisMonth()}
	if l.GetRateLimit() > 0 {
		out.RatePeriod, out.RatePeriodSeconds = days.Compact(l.GetRatePeriod().AsDuration()), l.GetRatePeriod().AsDuration().Seconds()
		if out.Burst == 0 {
			out.Burst = 1 // what brokerd applies
		}
	}
	if l.GetMaxWait() != nil && l.GetMaxWait().AsDuration() > 0 {
		out.MaxWait, out.MaxWaitSeconds = days.Compact(l.GetMaxWait().AsDuration()), l.GetMaxWait().AsDuration().Seconds()
	}
	return out
}

// limitsColumn is c's limits on one line for `credential list` and `status`: "rate 10/1m burst 2
// max-wait 30s, credits 12/100 this month", or "-".
func limitsColumn(c *credbrokerv1.Credential) string {
	l := limitsOf(c)
	if l == nil {
		return "-"
	}
	var parts []string
	if l.RateLimit > 0 {
		p := fmt.Sprintf("rate %d/%s burst %d", l.RateLimit, l.RatePeriod, l.Burst)
		if l.MaxWait != "" {
			p += " max-wait " + l.MaxWait
		}
		parts = append(parts, p)
	}
	if l.MonthlyCredits > 0 {
		parts = append(parts, fmt.Sprintf("credits %d/%d this month", l.CreditsThisMonth, l.MonthlyCredits))
	}
	return strings.Join(parts, ", ")
}
