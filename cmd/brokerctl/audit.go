package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// auditWatcher is the part of *client.Client behind `audit --follow`; test fakes may lack it.
type auditWatcher interface {
	WatchAudit(ctx context.Context, req *credbrokerv1.WatchAuditRequest, fn func([]*credbrokerv1.AuditRecord) error) error
}

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
outcome, latency and credential version. Queries appear only as length and keyed digest.

With --follow, brokerd streams new records as they are committed (the WatchAudit call): the
watch is audited once when it starts and once when it ends, so following does not grow the log.
Columns have fixed widths; a longer value is cut and ends in "…" (--json keeps every value whole).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sinceTS *timestamppb.Timestamp
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				sinceTS = timestamppb.New(t)
			}
			c, err := a.dial(a.socket, "")
			if err != nil {
				return err
			}
			defer c.Close()
			p := &auditPrinter{w: a.stdout, json: asJSON}
			if err := p.header(); err != nil {
				return err
			}
			if follow {
				if w, ok := c.(auditWatcher); ok {
					err := w.WatchAudit(cmd.Context(), &credbrokerv1.WatchAuditRequest{Since: sinceTS}, p.print)
					switch {
					case err == nil, cmd.Context().Err() != nil:
						return nil // interrupted: the normal end of a follow
					case !errors.Is(err, client.ErrUnimplemented):
						return err
					}
					// An older brokerd: poll it, resuming after what the watch printed.
					fmt.Fprintf(a.stderr, "brokerctl: this brokerd cannot stream its audit log (it is older than brokerctl); polling every %s instead, and each poll is itself audited\n", every)
				}
			}
			req := &credbrokerv1.ListAuditRequest{PageSize: 1000, Since: sinceTS, AfterSeq: p.last}
			for {
				ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
				recs, err := c.ListAudit(ctx, req)
				cancel()
				if err != nil {
					if follow && cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if err := p.print(recs); err != nil {
					return err
				}
				req.AfterSeq = p.last
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
	fl.DurationVar(&every, "poll", time.Second, "with --follow, how often to poll a brokerd too old to stream its audit log (ignored otherwise)")
	cmd.AddCommand(newAuditVerifyCmd(a))
	return cmd
}

// auditColumn is one column of the text listing. Every column but the last has a fixed width, so
// the lines of a follow, printed as records arrive, line up with the header and with each other.
type auditColumn struct {
	name  string
	width int  // 0: the last column, not padded
	right bool // numbers are right-aligned
}

var auditColumns = []auditColumn{
	{"SEQ", 10, true}, {"TIME", 20, false}, {"UID", 10, true}, {"PID", 7, true}, {"PROGRAM", 16, false},
	{"METHOD", 32, false}, {"TOOL", 13, false}, {"TOKEN", 16, false}, {"CODE", 18, false}, {"LATENCY", 11, true},
	{"CREDENTIAL", 24, false}, {"EVENT", 0, false},
}

// auditPrinter prints records as JSON lines or fixed-width rows and remembers the last seq.
type auditPrinter struct {
	w    io.Writer
	json bool
	last uint64
}

func (p *auditPrinter) header() error {
	if p.json {
		return nil
	}
	names := make([]string, len(auditColumns))
	for i, c := range auditColumns {
		names[i] = c.name
	}
	_, err := io.WriteString(p.w, auditRow(names))
	return err
}

func (p *auditPrinter) print(recs []*credbrokerv1.AuditRecord) error {
	var b strings.Builder
	for _, r := range recs {
		if r.GetSeq() <= p.last {
			continue // already printed (a fallback poll resumes where the watch was)
		}
		p.last = r.GetSeq()
		if p.json {
			if err := writeJSONLine(&b, auditJSON(r)); err != nil {
				return err
			}
			continue
		}
		cred := ""
		if r.GetCredential() != "" {
			cred = fmt.Sprintf("%s@v%d", r.GetCredential(), r.GetCredentialVersion())
		}
		b.WriteString(auditRow([]string{
			strconv.FormatUint(r.GetSeq(), 10), rfc3339(r.GetTime()), strconv.FormatUint(uint64(r.GetUid()), 10),
			strconv.FormatInt(int64(r.GetPid()), 10), program(r), strings.TrimPrefix(r.GetMethod(), "/credbroker.v1."),
			orDash(r.GetTool()), orDash(r.GetTokenId()), r.GetCode(), r.GetLatency().AsDuration().Round(time.Microsecond).String(),
			orDash(cred), eventText(r),
		}))
	}
	_, err := io.WriteString(p.w, b.String())
	return err
}

// auditRow lays out one line. Values are made printable first (the method of a probe for unknown
// methods, a caller's comm), so none can break the line or reach the terminal as an escape.
func auditRow(vals []string) string {
	var b strings.Builder
	for i, c := range auditColumns {
		v := printable(vals[i])
		if i > 0 {
			b.WriteString("  ")
		}
		if c.width == 0 {
			b.WriteString(v)
			break
		}
		v = fitWidth(v, c.width, c.right)
		b.WriteString(v)
	}
	return strings.TrimRight(b.String(), " ") + "\n"
}

// fitWidth pads v to width runes, or cuts it to width-1 runes and "…". A number is never cut (a
// wrong number is worse than a shifted line): one too long for its column is printed whole.
func fitWidth(v string, width int, right bool) string {
	n := utf8.RuneCountInString(v)
	switch {
	case n > width && right:
		return v
	case n > width:
		r := []rune(v)
		return string(r[:width-1]) + "…"
	case right:
		return strings.Repeat(" ", width-n) + v
	}
	return v + strings.Repeat(" ", width-n)
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
		"credits": r.GetCredits(), "credits_saved": r.GetCreditsSaved(), "token_label": r.GetTokenLabel(), "pidfd": r.GetPidfd(), "exe": r.GetExe(), "comm": r.GetComm(), "workload": r.GetWorkload(),
		"count": r.GetCount(),
	}
}

// eventText is the EVENT column: the event, and for a record that stands for several coalesced
// refusals, how many ("no-token ×250").
func eventText(r *credbrokerv1.AuditRecord) string {
	if r.GetCount() > 1 {
		return fmt.Sprintf("%s ×%d", orDash(r.GetEvent()), r.GetCount())
	}
	return orDash(r.GetEvent())
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
