package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func newAuditCmd(a *app) *cobra.Command {
	var (
		since  string
		follow bool
		asJSON bool
		every  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log (use `audit verify` to check its hash chain)",
		Long: `Show brokerd's audit log: every admin and tool call with the caller's uid/gid/pid, its program
(PROGRAM: named through a pidfd where the kernel has SO_PEERPIDFD, else "-"), token id, tool,
outcome, latency and credential version. Queries appear only as length and keyed digest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &credbrokerv1.ListAuditRequest{PageSize: 1000}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			c, err := a.dial(a.socket, "")
			if err != nil {
				return err
			}
			defer c.Close()
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "SEQ\tTIME\tUID\tPID\tPROGRAM\tMETHOD\tTOOL\tTOKEN\tCODE\tLATENCY\tCREDENTIAL\tEVENT")
			}
			for {
				ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
				recs, err := c.ListAudit(ctx, req)
				cancel()
				if err != nil {
					return err
				}
				for _, r := range recs {
					if asJSON {
						if err := writeJSONLine(a.stdout, auditJSON(r)); err != nil {
							return err
						}
					} else {
						cred := ""
						if r.GetCredential() != "" {
							cred = fmt.Sprintf("%s@v%d", r.GetCredential(), r.GetCredentialVersion())
						}
						fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetSeq(), rfc3339(r.GetTime()),
							r.GetUid(), r.GetPid(), program(r), strings.TrimPrefix(r.GetMethod(), "/credbroker.v1."), orDash(r.GetTool()),
							orDash(r.GetTokenId()), r.GetCode(), r.GetLatency().AsDuration().Round(time.Microsecond),
							orDash(cred), orDash(r.GetEvent()))
					}
					req.AfterSeq = r.GetSeq()
				}
				tw.Flush()
				if len(recs) == int(req.PageSize) {
					continue // more pages now
				}
				if !follow {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&since, "since", "", "only records at or after T: RFC3339 time or a duration ago such as 1h")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new records as they are written")
	fl.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	fl.DurationVar(&every, "poll", time.Second, "how often --follow asks for new records")
	cmd.AddCommand(newAuditVerifyCmd(a))
	return cmd
}

func newAuditVerifyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "Check the audit hash chain, every token and credential record's MAC, and that the chain head is not older than them; exits 1 and names the first bad record if anything was tampered with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				v, err := c.VerifyAudit(ctx)
				if err != nil {
					return err
				}
				if !v.GetOk() && v.GetBadSeq() == 0 {
					// A token or credential record failed its MAC: nothing in the chain to point at.
					return fmt.Errorf("database does not verify: %s", v.GetProblem())
				}
				if !v.GetOk() {
					return fmt.Errorf("audit log does not verify at record %d: %s", v.GetBadSeq(), v.GetProblem())
				}
				_, err = fmt.Fprintf(a.stdout, "audit log OK: %d records verified (seq %d..%d)\n", v.GetChecked(), v.GetFirstSeq(), v.GetLastSeq())
				return err
			})
		},
	}
}

// parseSince accepts an RFC3339 time or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, errors.New("--since: want an RFC3339 time (2026-11-25T10:00:00Z) or a duration such as 1h")
}

func auditJSON(r *credbrokerv1.AuditRecord) map[string]any {
	return map[string]any{
		"seq": r.GetSeq(), "time": rfc3339(r.GetTime()), "peer_known": r.GetPeerKnown(), "uid": r.GetUid(), "gid": r.GetGid(),
		"pid": r.GetPid(), "token_id": r.GetTokenId(), "method": r.GetMethod(), "tool": r.GetTool(), "code": r.GetCode(),
		"latency_us": r.GetLatency().AsDuration().Microseconds(), "credential": r.GetCredential(),
		"credential_version": r.GetCredentialVersion(), "query_len": r.GetQueryLen(), "query_mac": r.GetQueryMac(), "event": r.GetEvent(),
		"credits": r.GetCredits(), "credits_saved": r.GetCreditsSaved(), "token_label": r.GetTokenLabel(), "pidfd": r.GetPidfd(), "exe": r.GetExe(), "comm": r.GetComm(),
	}
}

// program names the calling program for the text listing: its executable's base name, else its
// command name in brackets (the caller picks its comm, so it is marked as such); "-" when brokerd
// could not vouch for either (no pidfd, or /proc hidden). Both come from the caller's side, so
// they pass through printable before they reach the terminal.
func program(r *credbrokerv1.AuditRecord) string {
	switch {
	case r.GetExe() != "":
		return printable(filepath.Base(r.GetExe()))
	case r.GetComm() != "":
		return "[" + printable(r.GetComm()) + "]"
	}
	return "-"
}
