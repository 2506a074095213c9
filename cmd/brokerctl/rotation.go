package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/cmd/internal/days"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// rotationAPI is what the rotation, history, policy, import and rekey commands need beyond
// brokerAPI. *client.Client has it; tests substitute a fake.
type rotationAPI interface {
	RotateCredentialVerified(ctx context.Context, name string, value []byte, verify bool) (*credbrokerv1.Credential, error)
	CredentialHistory(ctx context.Context, name string) (*credbrokerv1.CredentialHistoryResponse, error)
	RollbackCredential(ctx context.Context, name string, to uint64) (*credbrokerv1.RollbackCredentialResponse, error)
	SetRotationPolicy(ctx context.Context, name string, p *credbrokerv1.RotationPolicy) (*credbrokerv1.Credential, error)
	ImportCredential(ctx context.Context, name string, value []byte, source string) (*credbrokerv1.Credential, error)
	Rekey(ctx context.Context) (*credbrokerv1.RekeyResponse, error)
}

func rotationClient(c brokerAPI) (rotationAPI, error) {
	r, ok := c.(rotationAPI)
	if !ok {
		return nil, errors.New("internal error: this client cannot make rotation calls")
	}
	return r, nil
}

// callRotation is app.call for commands that need rotationAPI.
func (a *app) callRotation(cmd *cobra.Command, fn func(context.Context, rotationAPI) error) error {
	return a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
		r, err := rotationClient(c)
		if err != nil {
			return err
		}
		return fn(ctx, r)
	})
}

// parseAge parses a max age: Go durations ("720h", "90m") plus whole days ("30d", "1d12h").
func parseAge(s string) (time.Duration, error) {
	d, err := days.Parse(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: a max age must be greater than zero", s)
	}
	return d, nil
}

// formatAge renders a duration the way operators write max ages: "30d", "1d12h", "5h30m", "45s".
func formatAge(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	days, hours, mins := d/(24*time.Hour), d%(24*time.Hour)/time.Hour, d%time.Hour/time.Minute
	switch {
	case days > 0 && hours == 0:
		return fmt.Sprintf("%dd", days)
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, hours)
	case hours > 0 && mins == 0:
		return fmt.Sprintf("%dh", hours)
	case hours > 0:
		return fmt.Sprintf("%dh%dm", hours, mins)
	case mins > 0:
		return fmt.Sprintf("%dm", mins)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// dueColumn describes a credential's due state for `credential list`.
func dueColumn(c *credbrokerv1.Credential, now time.Time) string {
	if c.GetNextDue() == nil {
		return "-"
	}
	next := c.GetNextDue().AsTime()
	if c.GetOverdue() {
		return "OVERDUE by " + formatAge(now.Sub(next))
	}
	return fmt.Sprintf("in %s (%s)", formatAge(next.Sub(now)), next.UTC().Format(time.RFC3339))
}

func ageColumn(c *credbrokerv1.Credential, now time.Time) string {
	if c.GetRotatedAt() == nil {
		return "-"
	}
	return formatAge(now.Sub(c.GetRotatedAt().AsTime()))
}

// rotationJSON is the rotation part of a `credential list --json` element.
type rotationJSON struct {
	AgeSeconds      int64  `json:"age_seconds"`
	PreviousVersion uint64 `json:"previous_version,omitempty"`
	PendingVersion  uint64 `json:"pending_version,omitempty"`
	MaxAge          string `json:"max_age,omitempty"`
	NextDue         string `json:"next_due,omitempty"`
	Overdue         bool   `json:"overdue"`
	AutoRotate      bool   `json:"auto_rotate,omitempty"`
	Verify          bool   `json:"verify,omitempty"`
}

// credentialListJSON is one element of `credential list --json`.
type credentialListJSON struct {
	credentialJSON
	rotationJSON
	Limits *limitsJSON `json:"limits,omitempty"` // economics.go; absent without limits
}

func rotationOf(c *credbrokerv1.Credential, now time.Time) rotationJSON {
	r := rotationJSON{PreviousVersion: c.GetPreviousVersion(), PendingVersion: c.GetPendingVersion(), NextDue: rfc3339(c.GetNextDue()), Overdue: c.GetOverdue()}
	if c.GetRotatedAt() != nil {
		r.AgeSeconds = int64(now.Sub(c.GetRotatedAt().AsTime()) / time.Second)
	}
	if p := c.GetPolicy(); p != nil {
		if p.GetMaxAge() != nil {
			r.MaxAge = formatAge(p.GetMaxAge().AsDuration())
		}
		r.AutoRotate, r.Verify = len(p.GetRotateCommand()) > 0, p.GetVerify()
	}
	return r
}

// rotateValue sends a rotation, verified or not.
func rotateValue(ctx context.Context, c brokerAPI, name string, value []byte, verify bool) (*credbrokerv1.Credential, error) {
	if !verify {
		return c.RotateCredential(ctx, name, value)
	}
	r, err := rotationClient(c)
	if err != nil {
		return nil, err
	}
	return r.RotateCredentialVerified(ctx, name, value, true)
}

// historyOutJSON is the output of `credential history --json`.
type historyOutJSON struct {
	Versions []historyJSON `json:"versions"`
	Events   []eventJSON   `json:"events"`
}

type eventJSON struct {
	At      string  `json:"at"`
	Event   string  `json:"event"`
	Version uint64  `json:"version,omitempty"`
	ByUID   *uint32 `json:"by_uid,omitempty"`
	Detail  string  `json:"detail,omitempty"`
}

// historyJSON is one version in `credential history --json`.
type historyJSON struct {
	Version      uint64  `json:"version"`
	State        string  `json:"state"`
	How          string  `json:"how"`
	Verified     bool    `json:"verified"`
	CreatedAt    string  `json:"created_at"`
	CreatedByUID *uint32 `json:"created_by_uid,omitempty"`
	FromVersion  uint64  `json:"from_version,omitempty"`
	KeyID        uint32  `json:"key_id"`
}

func newCredentialHistoryCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history NAME",
		Short: "List a credential's kept versions: when, by whom, how, verified (never values)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp *credbrokerv1.CredentialHistoryResponse
			if err := a.callRotation(cmd, func(ctx context.Context, r rotationAPI) error {
				var err error
				resp, err = r.CredentialHistory(ctx, args[0])
				return err
			}); err != nil {
				return err
			}
			if asJSON {
				out := historyOutJSON{Versions: []historyJSON{}, Events: []eventJSON{}}
				for _, v := range resp.GetVersions() {
					out.Versions = append(out.Versions, historyJSON{
						Version: v.GetVersion(), State: v.GetState(), How: v.GetHow(), Verified: v.GetVerified(),
						CreatedAt: rfc3339(v.GetCreatedAt()), CreatedByUID: v.CreatedByUid, FromVersion: v.GetFromVersion(), KeyID: v.GetKeyId(),
					})
				}
				for _, e := range resp.GetEvents() {
					out.Events = append(out.Events, eventJSON{At: rfc3339(e.GetAt()), Event: e.GetEvent(), Version: e.GetVersion(), ByUID: e.ByUid, Detail: e.GetDetail()})
				}
				return writeJSON(a.stdout, out)
			}
			return printHistory(a.stdout, resp)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func printHistory(w io.Writer, resp *credbrokerv1.CredentialHistoryResponse) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tHOW\tVERIFIED\tCREATED\tBY UID\tDATA KEY")
	for _, v := range resp.GetVersions() {
		how := v.GetHow()
		if v.GetFromVersion() != 0 {
			how = fmt.Sprintf("%s of v%d", how, v.GetFromVersion())
		}
		by := "-"
		if v.CreatedByUid != nil {
			by = strconv.FormatUint(uint64(v.GetCreatedByUid()), 10)
		}
		verified := "no"
		if v.GetVerified() {
			verified = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", v.GetVersion(), v.GetState(), how, verified, orDash(rfc3339(v.GetCreatedAt())), by, v.GetKeyId())
	}
	if err := tw.Flush(); err != nil || len(resp.GetEvents()) == 0 {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tVERSION\tBY UID\tDETAIL")
	for _, e := range resp.GetEvents() {
		by := "-"
		if e.ByUid != nil {
			by = strconv.FormatUint(uint64(e.GetByUid()), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", orDash(rfc3339(e.GetAt())), e.GetEvent(), e.GetVersion(), by, orDash(printable(e.GetDetail())))
	}
	return tw.Flush()
}

func newCredentialRollbackCmd(a *app) *cobra.Command {
	var to uint64
	cmd := &cobra.Command{
		Use:   "rollback NAME [--to VERSION]",
		Short: "Serve an earlier version's value again (stored as a new version)",
		Long: `Make the value of an earlier kept version current again. It is stored as a new version
(how=rollback), so every call that starts after this returns uses it, exactly as after a rotation.
Without --to, the previous version is used. See ` + "`credential history NAME`" + ` for the kept versions.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.callRotation(cmd, func(ctx context.Context, r rotationAPI) error {
				resp, err := r.RollbackCredential(ctx, args[0], to)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "rolled back %s: version %d now serves the value of version %d\n",
					args[0], resp.GetCredential().GetVersion(), resp.GetFromVersion())
				return nil
			})
		},
	}
	cmd.Flags().Uint64Var(&to, "to", 0, "version to roll back to (default: the previous version)")
	return cmd
}

func newCredentialPolicyCmd(a *app) *cobra.Command {
	var (
		maxAge, command string
		verify, clear   bool
		lim             limitFlags
	)
	cmd := &cobra.Command{
		Use:   "policy NAME [--max-age 30d] [--rotate-command PATH [-- ARGS...]] [--verify] | --clear",
		Short: "Set when a credential is due for rotation, and how brokerd rotates it by itself",
		Long: `Set a credential's rotation policy; each call replaces the whole policy.

--max-age: how long a version may stay current (30d is the tutorial's default). ` + "`credential list`" + `
and ` + "`status`" + ` show the age, next due date and overdue credentials; brokerd logs a warning once when a
credential becomes due.

--rotate-command PATH [-- ARGS...]: when the credential is due, brokerd runs PATH with ARGS itself
(no shell, fixed arguments, a minimal environment with CREDBROKER_CREDENTIAL and
CREDBROKER_CURRENT_VERSION, no stdin, a 1 minute timeout) and stores what it prints on stdout as the
new version. On failure the current key stays and brokerd retries with backoff; ` + "`status`" + ` shows
the failure. PATH must be absolute and owned by root or brokerd's user, writable by no one else (also where
its symlinks lead);
only root or brokerd's own user may set it.

--verify: stage each scheduled rotation and promote it only if the upstream accepts the new key.`,
		Example: `  brokerctl credential policy scavio_api_key --max-age 30d
  brokerctl credential policy scavio_api_key --max-age 30d --verify \
      --rotate-command /usr/local/libexec/new-scavio-key -- --project prod
  brokerctl credential policy scavio_api_key --clear`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, extra := args[0], args[1:]
			if dash := cmd.ArgsLenAtDash(); dash > 1 || (dash < 0 && len(extra) > 0) {
				return fmt.Errorf("%s takes only NAME; the rotate command's arguments go after --rotate-command PATH --", subcommandPath(cmd))
			}
			if len(extra) > 0 && command == "" {
				return errors.New("arguments after -- are the rotate command's; they need --rotate-command PATH")
			}
			limitsSet := lim.any(cmd)
			if limitsSet && !clear && maxAge == "" && command == "" && !verify {
				return a.setLimits(cmd, name, &lim) // only spending limits: leave the rotation policy alone
			}
			var p *credbrokerv1.RotationPolicy
			switch {
			case clear && (maxAge != "" || command != "" || verify):
				return errors.New("--clear cannot be combined with other policy flags")
			case clear:
			case maxAge == "" && command == "" && !verify:
				return errors.New("nothing to set: give --max-age, --rotate-command, --verify, --rate, --burst, --max-wait or --monthly-credits (or --clear to remove the rotation policy)")
			default:
				p = &credbrokerv1.RotationPolicy{Verify: verify}
				if maxAge != "" {
					d, err := parseAge(maxAge)
					if err != nil {
						return fmt.Errorf("--max-age: %w", err)
					}
					p.MaxAge = durationpb.New(d)
				}
				if command != "" {
					p.RotateCommand = append([]string{command}, extra...)
				}
			}
			return a.callRotation(cmd, func(ctx context.Context, r rotationAPI) error {
				c, err := r.SetRotationPolicy(ctx, name, p)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, describePolicy(c, time.Now()))
				if limitsSet {
					return a.setLimits(cmd, name, &lim)
				}
				return nil
			})
		},
	}
	lim.register(cmd)
	f := cmd.Flags()
	f.StringVar(&maxAge, "max-age", "", "maximum age of a version, e.g. 30d, 12h")
	f.StringVar(&command, "rotate-command", "", "absolute path of a program that prints a new key (arguments after --)")
	f.BoolVar(&verify, "verify", false, "verify scheduled rotations upstream before promoting them")
	f.BoolVar(&clear, "clear", false, "remove the policy")
	return cmd
}

func describePolicy(c *credbrokerv1.Credential, now time.Time) string {
	p := c.GetPolicy()
	if p == nil {
		return fmt.Sprintf("%s: no rotation policy", c.GetName())
	}
	var parts []string
	if p.GetMaxAge() != nil {
		parts = append(parts, "max age "+formatAge(p.GetMaxAge().AsDuration()), "due "+dueColumn(c, now))
	}
	if cmd := p.GetRotateCommand(); len(cmd) > 0 {
		parts = append(parts, fmt.Sprintf("rotated by %s (%d arguments)", cmd[0], len(cmd)-1))
	}
	if p.GetVerify() {
		parts = append(parts, "verified before promotion")
	}
	return fmt.Sprintf("%s: %s", c.GetName(), strings.Join(parts, "; "))
}

// printRotationStatus adds the rotation part of `status` to tw.
func printRotationStatus(tw io.Writer, st *credbrokerv1.StatusResponse) {
	if ids := st.GetMasterKeyIds(); len(ids) > 0 {
		fmt.Fprintf(tw, "master key in use:\t%s\n", joinIDs(ids))
	}
	if len(st.GetDataKeys()) > 0 {
		var keys []string
		for _, k := range st.GetDataKeys() {
			s := fmt.Sprintf("%d (%d versions", k.GetKeyId(), k.GetVersions())
			if k.GetPrimary() {
				s += ", primary"
			}
			keys = append(keys, s+")")
		}
		fmt.Fprintf(tw, "data keys:\t%s\n", strings.Join(keys, ", "))
	}
	now := time.Now()
	for _, r := range st.GetRotation() {
		due := "no max age"
		if r.GetNextDue() != nil {
			due = dueColumn(&credbrokerv1.Credential{NextDue: r.GetNextDue(), Overdue: r.GetOverdue()}, now)
		}
		auto := ""
		if r.GetAutoRotate() {
			auto = ", rotated automatically"
		}
		fmt.Fprintf(tw, "rotation %s:\tv%d, age %s, due %s%s\n", r.GetCredential(), r.GetVersion(),
			ageColumn(&credbrokerv1.Credential{RotatedAt: r.GetRotatedAt()}, now), due, auto)
	}
	for _, w := range st.GetWarnings() {
		fmt.Fprintf(tw, "WARNING:\t%s\n", printable(w))
	}
}

func joinIDs(ids []uint32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(s, ", ")
}

// statusRotationJSON is the rotation part of `status --json`.
type statusRotationJSON struct {
	Warnings         []string             `json:"warnings"`
	MasterKeyIDs     []uint32             `json:"master_key_ids"`
	DataPrimaryKeyID uint32               `json:"data_primary_key_id"`
	DataKeys         []dataKeyJSON        `json:"data_keys"`
	Rotation         []rotationStatusJSON `json:"rotation"`
}

type dataKeyJSON struct {
	KeyID    uint32 `json:"key_id"`
	Primary  bool   `json:"primary"`
	Versions uint64 `json:"versions"`
}

type rotationStatusJSON struct {
	Credential  string `json:"credential"`
	Version     uint64 `json:"version"`
	RotatedAt   string `json:"rotated_at"`
	NextDue     string `json:"next_due,omitempty"`
	Overdue     bool   `json:"overdue"`
	AutoRotate  bool   `json:"auto_rotate"`
	Failures    uint32 `json:"failures,omitempty"`
	LastError   string `json:"last_error,omitempty"`
	NextAttempt string `json:"next_attempt,omitempty"`
}

func statusRotation(st *credbrokerv1.StatusResponse) statusRotationJSON {
	out := statusRotationJSON{
		Warnings: append([]string{}, st.GetWarnings()...), MasterKeyIDs: append([]uint32{}, st.GetMasterKeyIds()...),
		DataPrimaryKeyID: st.GetDataPrimaryKeyId(), DataKeys: []dataKeyJSON{}, Rotation: []rotationStatusJSON{},
	}
	for _, k := range st.GetDataKeys() {
		out.DataKeys = append(out.DataKeys, dataKeyJSON{k.GetKeyId(), k.GetPrimary(), k.GetVersions()})
	}
	for _, r := range st.GetRotation() {
		out.Rotation = append(out.Rotation, rotationStatusJSON{
			Credential: r.GetCredential(), Version: r.GetVersion(), RotatedAt: rfc3339(r.GetRotatedAt()), NextDue: rfc3339(r.GetNextDue()),
			Overdue: r.GetOverdue(), AutoRotate: r.GetAutoRotate(), Failures: r.GetFailures(), LastError: r.GetLastError(),
			NextAttempt: rfc3339(r.GetNextAttempt()),
		})
	}
	return out
}
