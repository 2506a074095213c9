package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newTokenCmd(a *app) *cobra.Command {
	return groupCmd("token", "Mint, list and revoke tokens",
		newTokenMintCmd(a),
		newTokenListCmd(a),
		newTokenRevokeCmd(a),
		newTokenInspectCmd(a),
		newTokenFetchCmd(a), // workload.go
	)
}

// mintFlags are the flags of `token mint`.
type mintFlags struct {
	tools   []string
	ttl     time.Duration
	maxUses uint64
	bindUID uint32
	label   string
	rate    string
	budget  string
	shared  bool
	asJSON  bool
}

// mintRequest builds the request from the flags. bindUIDSet reports whether --bind-uid was given:
// uid 0 is a valid binding, so the zero value cannot mean "unset".
func (f *mintFlags) mintRequest(bindUIDSet bool) (*credbrokerv1.MintTokenRequest, error) {
	var tools []string
	for _, t := range f.tools {
		if t = strings.TrimSpace(t); t != "" {
			tools = append(tools, t)
		}
	}
	if len(tools) == 0 {
		return nil, errors.New("--tools needs at least one tool name, e.g. --tools web_search")
	}
	if f.ttl <= 0 {
		return nil, fmt.Errorf("--ttl must be positive, got %s", f.ttl)
	}
	req := &credbrokerv1.MintTokenRequest{
		Tools:   tools,
		Ttl:     durationpb.New(f.ttl),
		MaxUses: f.maxUses,
		Label:   f.label,
	}
	if bindUIDSet {
		uid := f.bindUID
		req.BindUid = &uid
	}
	if f.budget != "" {
		n, per, err := parseBudget(f.budget)
		if err != nil {
			return nil, err
		}
		req.BudgetCredits, req.BudgetPeriod = n, per
	}
	req.SharedCache = f.shared
	if f.rate != "" {
		n, per, err := parseRate(f.rate)
		if err != nil {
			return nil, err
		}
		req.RateLimit, req.RatePeriod = n, durationpb.New(per)
	}
	return req, nil
}

func newTokenMintCmd(a *app) *cobra.Command {
	var f mintFlags
	cmd := &cobra.Command{
		Use:   "mint --tools TOOL[,TOOL...]",
		Short: "Mint a scoped, short-lived token (printed once)",
		Long: `Mint a token for the given tools. The token is printed once, alone on stdout, and cannot
be recovered later: only its hash is stored. With --json, the token, its public id and its expiry
are printed as a JSON object.`,
		Example: `  export CREDBROKER_TOKEN=$(brokerctl token mint --tools web_search --ttl 8h --label laptop)`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := f.mintRequest(cmd.Flags().Changed("bind-uid"))
			if err != nil {
				return err
			}
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				resp, err := c.MintToken(ctx, req)
				if err != nil {
					return err
				}
				if f.asJSON {
					return writeJSON(a.stdout, struct {
						Token     string `json:"token"`
						ID        string `json:"id"`
						ExpiresAt string `json:"expires_at"`
					}{resp.GetToken(), resp.GetId(), rfc3339(resp.GetExpiresAt())})
				}
				_, err = fmt.Fprintln(a.stdout, resp.GetToken())
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.tools, "tools", nil, "comma-separated tools the token may call (required)")
	fl.DurationVar(&f.ttl, "ttl", time.Hour, "how long the token lives")
	fl.Uint64Var(&f.maxUses, "max-uses", 0, "maximum number of calls (0: unlimited)")
	fl.Uint32Var(&f.bindUID, "bind-uid", 0, "only accept the token from callers with this local uid")
	fl.StringVar(&f.label, "label", "", "note for operators, shown by token list")
	fl.StringVar(&f.budget, "budget", "", "upstream credits the token may spend per day or month: N/d or N/m, e.g. 100/d")
	fl.BoolVar(&f.shared, "shared-cache", false, "share cached results with other --shared-cache tokens (otherwise the token's cache is its own)")
	fl.StringVar(&f.rate, "rate", "", "rate limit N/PERIOD, e.g. 10/m (PERIOD: s, m, h, d or a duration such as 30s)")
	fl.BoolVar(&f.asJSON, "json", false, "print a JSON object with token, id and expires_at")
	cmd.MarkFlagRequired("tools")
	return cmd
}

// tokenJSON is one element of `token list --json`. It has no secret: the daemon does not keep one.
type tokenJSON struct {
	ID          string   `json:"id"`
	Tools       []string `json:"tools"`
	CreatedAt   string   `json:"created_at,omitempty"`
	ExpiresAt   string   `json:"expires_at,omitempty"`
	MaxUses     uint64   `json:"max_uses"`
	Uses        uint64   `json:"uses"`
	BindUID     *uint32  `json:"bind_uid,omitempty"`
	Label       string   `json:"label"`
	Revoked     bool     `json:"revoked"`
	RevokedAt   string   `json:"revoked_at,omitempty"`
	MintedByUID uint32   `json:"minted_by_uid"`
	State       string   `json:"state"`
}

// tokenState is the STATE column: revoked, expired, used-up or active, in that order of precedence.
func tokenState(t *credbrokerv1.TokenInfo, now time.Time) string {
	switch {
	case t.GetRevoked():
		return "revoked"
	case t.GetExpiresAt() != nil && !now.Before(t.GetExpiresAt().AsTime()):
		return "expired"
	case t.GetMaxUses() > 0 && t.GetUses() >= t.GetMaxUses():
		return "used-up"
	}
	return "active"
}

// tokenUses is the USES column: "used/max", or "-" for unlimited tokens, whose uses are not counted.
func tokenUses(t *credbrokerv1.TokenInfo) string {
	if t.GetMaxUses() == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", t.GetUses(), t.GetMaxUses())
}

func newTokenListCmd(a *app) *cobra.Command {
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List live tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var tokens []*credbrokerv1.TokenInfo
			err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				var err error
				tokens, err = c.ListAllTokens(ctx, all)
				return err
			})
			if err != nil {
				return err
			}
			now := time.Now()
			if asJSON {
				out := make([]tokenJSON, 0, len(tokens))
				for _, t := range tokens {
					out = append(out, tokenJSON{
						ID:          t.GetId(),
						Tools:       append([]string{}, t.GetTools()...),
						CreatedAt:   rfc3339(t.GetCreatedAt()),
						ExpiresAt:   rfc3339(t.GetExpiresAt()),
						MaxUses:     t.GetMaxUses(),
						Uses:        t.GetUses(),
						BindUID:     t.BindUid,
						Label:       t.GetLabel(),
						Revoked:     t.GetRevoked(),
						RevokedAt:   rfc3339(t.GetRevokedAt()),
						MintedByUID: t.GetMintedByUid(),
						State:       tokenState(t, now),
					})
				}
				return writeJSON(a.stdout, out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTOOLS\tEXPIRES\tUSES\tLABEL\tSTATE")
			for _, t := range tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n",
					t.GetId(), strings.Join(t.GetTools(), ","), orDash(rfc3339(t.GetExpiresAt())),
					tokenUses(t), orDash(printable(t.GetLabel())), tokenState(t, now))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.Flags().BoolVar(&all, "all", false, "include expired and revoked tokens")
	return cmd
}

func newTokenRevokeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token by its public id (see token list)",
		Long: `Revoke a token by its public id, as shown by token list. A whole token (cbt_<id>_...) is
accepted too, for revoking a leaked token you hold: only its id is sent.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := tokenID(args[0])
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				if _, err := c.RevokeToken(ctx, id); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "revoked token %s\n", id)
				return nil
			})
		},
	}
}

// tokenID returns the public id of a whole token "cbt_<id>_<secret>", so the secret is never sent
// or echoed in an error; anything else is returned as is, taken to be an id.
func tokenID(s string) string {
	const prefix = "cbt_"
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return s
	}
	if id, _, ok := strings.Cut(rest, "_"); ok {
		return id
	}
	return s
}
