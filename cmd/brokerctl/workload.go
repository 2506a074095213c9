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
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/cmd/internal/days"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// workloadAPI is what the workload commands need beyond brokerAPI.
type workloadAPI interface {
	AddWorkload(context.Context, *credbrokerv1.AddWorkloadRequest) (*credbrokerv1.Workload, error)
	ListWorkloads(context.Context) ([]*credbrokerv1.Workload, error)
	RemoveWorkload(ctx context.Context, name string) error
	FetchToken(ctx context.Context, tools []string) (*credbrokerv1.FetchTokenResponse, error)
}

func workloadClient(c brokerAPI) (workloadAPI, error) {
	w, ok := c.(workloadAPI)
	if !ok {
		return nil, errors.New("this client cannot manage workloads")
	}
	return w, nil
}

func newWorkloadCmd(a *app) *cobra.Command {
	return groupCmd("workload", "Register programs that fetch tokens with no secret (attestation)",
		newWorkloadAddCmd(a),
		newWorkloadListCmd(a),
		newWorkloadRemoveCmd(a),
	)
}

// parseIDs parses "1000,1001" (flag values already split on commas).
func parseIDs(flag string, vals []string) ([]uint32, error) {
	var out []uint32
	for _, v := range vals {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q is not a numeric id", flag, v)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

func newWorkloadAddCmd(a *app) *cobra.Command {
	var (
		tools, uids, gids     []string
		exe, sha, unit, label string
		budget, rate          string
		pin                   bool
		ttl                   time.Duration
		maxUses               uint64
	)
	cmd := &cobra.Command{
		Use:   "add NAME --tools TOOL[,TOOL...] (--uid U,... | --gid G,... | --unit UNIT) [--exe PATH [--exe-sha256 HEX | --pin-exe]]",
		Short: "Register a program that may fetch tokens by attestation",
		Long: `Register a workload: a program that may call FetchToken (or ` + "`brokerctl token fetch`" + `) and
get a token with no secret. brokerd identifies the caller from the socket; every selector given
must match: --uid (any of), --gid (the caller's gid or a supplementary group, any of), --exe (the
path /proc/PID/exe shows), --exe-sha256 or --pin-exe (the executable's digest; --pin-exe records
the file at --exe now), --unit (the systemd unit of its cgroup). At least one of --uid, --gid or
--unit is required. The uid is the real boundary: see the README's threat model.`,
		Example: `  brokerctl workload add scavio-mcp --tools web_search --uid 1000 --exe /usr/local/bin/scavio-mcp --pin-exe --ttl 1h`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := &credbrokerv1.Workload{Name: args[0], Exe: exe, ExeSha256: strings.ToLower(sha), Unit: unit, Label: label, MaxUses: maxUses, Ttl: durationpb.New(ttl)}
			for _, t := range tools {
				if t = strings.TrimSpace(t); t != "" {
					w.Tools = append(w.Tools, t)
				}
			}
			if len(w.Tools) == 0 {
				return errors.New("--tools needs at least one tool name, e.g. --tools web_search")
			}
			var err error
			if w.Uids, err = parseIDs("uid", uids); err != nil {
				return err
			}
			if w.Gids, err = parseIDs("gid", gids); err != nil {
				return err
			}
			if len(w.Uids) == 0 && len(w.Gids) == 0 && unit == "" {
				return errors.New("give at least one of --uid, --gid or --unit: a registration for anyone is not allowed")
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl must be positive, got %s", ttl)
			}
			if budget != "" {
				if w.BudgetCredits, w.BudgetPeriod, err = parseBudget(budget); err != nil {
					return err
				}
			}
			if rate != "" {
				n, per, err := parseRate(rate)
				if err != nil {
					return err
				}
				w.RateLimit, w.RatePeriod = n, durationpb.New(per)
			}
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				wc, err := workloadClient(c)
				if err != nil {
					return err
				}
				out, err := wc.AddWorkload(ctx, &credbrokerv1.AddWorkloadRequest{Workload: w, PinExe: pin})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "workload %s registered: %s\n", out.GetName(), workloadSelectors(out))
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&tools, "tools", nil, "comma-separated tools the fetched tokens may call (required)")
	fl.StringSliceVar(&uids, "uid", nil, "caller uids, comma-separated (any of)")
	fl.StringSliceVar(&gids, "gid", nil, "caller gids or supplementary groups, comma-separated (any of)")
	fl.StringVar(&exe, "exe", "", "the caller's executable path, as /proc/PID/exe shows it")
	fl.StringVar(&sha, "exe-sha256", "", "the sha256 of the caller's executable (hex)")
	fl.BoolVar(&pin, "pin-exe", false, "record the sha256 of the file at --exe now")
	fl.StringVar(&unit, "unit", "", "the systemd unit the caller runs in, e.g. scavio-mcp.service (a user manager's unit: user@UID.service:NAME.service)")
	fl.DurationVar(&ttl, "ttl", time.Hour, "lifetime of each fetched token (clients renew before it ends)")
	fl.Uint64Var(&maxUses, "max-uses", 0, "calls each fetched token may make (0: unlimited)")
	fl.StringVar(&budget, "budget", "", "upstream credits each fetched token may spend: N/d or N/m")
	fl.StringVar(&rate, "rate", "", "calls per period for each fetched token: N/PERIOD, e.g. 10/m")
	fl.StringVar(&label, "label", "", "label of fetched tokens (default workload:NAME)")
	return cmd
}

// workloadSelectors describes a registration's selectors on one line.
func workloadSelectors(w *credbrokerv1.Workload) string {
	var parts []string
	ids := func(name string, v []uint32) {
		if len(v) > 0 {
			s := make([]string, len(v))
			for i, n := range v {
				s[i] = strconv.FormatUint(uint64(n), 10)
			}
			parts = append(parts, name+"="+strings.Join(s, ","))
		}
	}
	ids("uid", w.GetUids())
	ids("gid", w.GetGids())
	if w.GetExe() != "" {
		parts = append(parts, "exe="+w.GetExe())
	}
	if d := w.GetExeSha256(); d != "" {
		parts = append(parts, "sha256="+d[:12]+"…")
	}
	if w.GetUnit() != "" {
		parts = append(parts, "unit="+w.GetUnit())
	}
	parts = append(parts, "tools="+strings.Join(w.GetTools(), ","), "ttl="+days.Compact(w.GetTtl().AsDuration()))
	return strings.Join(parts, " ")
}

func newWorkloadListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List workload registrations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				wc, err := workloadClient(c)
				if err != nil {
					return err
				}
				list, err := wc.ListWorkloads(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					out := make([]workloadJSON, 0, len(list))
					for _, w := range list {
						out = append(out, toWorkloadJSON(w))
					}
					return writeJSON(a.stdout, out)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSELECTORS")
				for _, w := range list {
					fmt.Fprintf(tw, "%s\t%s\n", w.GetName(), workloadSelectors(w))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

// workloadJSON is one registration in `workload list --json` and `status --json`.
type workloadJSON struct {
	Name          string   `json:"name"`
	Tools         []string `json:"tools"`
	UIDs          []uint32 `json:"uids"`
	GIDs          []uint32 `json:"gids"`
	Exe           string   `json:"exe,omitempty"`
	ExeSHA256     string   `json:"exe_sha256,omitempty"`
	Unit          string   `json:"unit,omitempty"`
	TTL           string   `json:"ttl"`
	MaxUses       uint64   `json:"max_uses,omitempty"`
	BudgetCredits uint64   `json:"budget_credits,omitempty"`
	BudgetPeriod  string   `json:"budget_period,omitempty"`
	RateLimit     uint32   `json:"rate_limit,omitempty"`
	RatePeriod    string   `json:"rate_period,omitempty"`
	Label         string   `json:"label,omitempty"`
	CreatedAt     string   `json:"created_at"`
	CreatedByUID  uint32   `json:"created_by_uid"`
}

func toWorkloadJSON(w *credbrokerv1.Workload) workloadJSON {
	out := workloadJSON{
		Name: w.GetName(), Tools: w.GetTools(), UIDs: append([]uint32{}, w.GetUids()...), GIDs: append([]uint32{}, w.GetGids()...),
		Exe: w.GetExe(), ExeSHA256: w.GetExeSha256(), Unit: w.GetUnit(), TTL: w.GetTtl().AsDuration().String(),
		MaxUses: w.GetMaxUses(), BudgetCredits: w.GetBudgetCredits(), BudgetPeriod: w.GetBudgetPeriod(),
		RateLimit: w.GetRateLimit(), Label: w.GetLabel(), CreatedAt: rfc3339(w.GetCreatedAt()), CreatedByUID: w.GetCreatedByUid(),
	}
	if w.GetRatePeriod() != nil {
		out.RatePeriod = w.GetRatePeriod().AsDuration().String()
	}
	return out
}

func newWorkloadRemoveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a workload registration (tokens already fetched live on until they end)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				wc, err := workloadClient(c)
				if err != nil {
					return err
				}
				if err := wc.RemoveWorkload(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "workload %s removed\n", args[0])
				return nil
			})
		},
	}
}

func newTokenFetchCmd(a *app) *cobra.Command {
	var (
		tools  []string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "fetch [--tools TOOL,...]",
		Short: "Fetch a token by attestation (no secret; needs a registration for brokerctl itself)",
		Long: `Ask brokerd for a token with no secret: brokerd identifies this brokerctl process from the
socket and matches it against the workload registrations. A brokerctl process matches only a
registration for brokerctl itself. The token is bound to this uid and is revoked when this
brokerctl process exits, so it is useful only to see whether a registration matches (the
refusal names what did not), or with --json in a script's own tests.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				wc, err := workloadClient(c)
				if err != nil {
					return err
				}
				resp, err := wc.FetchToken(ctx, tools)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(a.stdout, struct {
						Token     string   `json:"token"`
						ID        string   `json:"id"`
						ExpiresAt string   `json:"expires_at"`
						Workload  string   `json:"workload"`
						Tools     []string `json:"tools"`
					}{resp.GetToken(), resp.GetId(), rfc3339(resp.GetExpiresAt()), resp.GetWorkload(), resp.GetTools()})
				}
				_, err = fmt.Fprintln(a.stdout, resp.GetToken())
				return err
			})
		},
	}
	cmd.Flags().StringSliceVar(&tools, "tools", nil, "tools the token should be scoped to (default: all of the registration's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print token, id, expiry, workload and tools as JSON")
	return cmd
}
