package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// statusJSON is the output of `status --json`.
type statusJSON struct {
	Version       string   `json:"version"`
	StartedAt     string   `json:"started_at,omitempty"`
	Uptime        string   `json:"uptime"`
	UptimeSeconds int64    `json:"uptime_seconds"`
	Credentials   uint32   `json:"credentials"`
	LiveTokens    uint32   `json:"live_tokens"`
	SchemaVersion uint32   `json:"schema_version"`
	Tools         []string `json:"tools"`
	// Limits are the credentials with spending limits (economics.go).
	Limits []credentialLimitsJSON `json:"limits"`
	// Workloads are the attestation registrations (workload.go).
	Workloads []workloadJSON `json:"workloads"`
	// MasterKey is the KEK's source (a file or a KMS URI, never a secret) and KMS state.
	MasterKey masterKeyJSON `json:"master_key"`

	statusRotationJSON // rotation.go: warnings, key ids, rotation state
}

func newStatusCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show brokerd's version, uptime and counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st *credbrokerv1.StatusResponse
			err := a.call(cmd, "", func(ctx context.Context, c brokerAPI) error {
				var err error
				st, err = c.Status(ctx)
				return err
			})
			if err != nil {
				return err
			}
			uptime := st.GetUptime().AsDuration().Truncate(time.Second)
			if asJSON {
				return writeJSON(a.stdout, statusJSON{
					Version:       st.GetVersion(),
					StartedAt:     rfc3339(st.GetStartedAt()),
					Uptime:        uptime.String(),
					UptimeSeconds: int64(uptime / time.Second),
					Credentials:   st.GetCredentials(),
					LiveTokens:    st.GetLiveTokens(),
					SchemaVersion: st.GetSchemaVersion(),
					Tools:         append([]string{}, st.GetTools()...),

					statusRotationJSON: statusRotation(st), // rotation.go
					Limits:             statusLimits(st),
					Workloads:          statusWorkloads(st),
					MasterKey: masterKeyJSON{Source: st.GetMasterKeySource(), LastKMSContact: rfc3339(st.GetMasterKeyLastKmsContact()),
						KeyVersions: append([]string{}, st.GetMasterKeyVersions()...)},
				})
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "version:\t%s\n", orDash(st.GetVersion()))
			fmt.Fprintf(tw, "started:\t%s\n", orDash(rfc3339(st.GetStartedAt())))
			fmt.Fprintf(tw, "uptime:\t%s\n", uptime)
			fmt.Fprintf(tw, "credentials:\t%d\n", st.GetCredentials())
			fmt.Fprintf(tw, "live tokens:\t%d\n", st.GetLiveTokens())
			fmt.Fprintf(tw, "schema version:\t%d\n", st.GetSchemaVersion())
			fmt.Fprintf(tw, "tools:\t%s\n", orDash(strings.Join(st.GetTools(), ", ")))
			for _, c := range st.GetLimitedCredentials() {
				fmt.Fprintf(tw, "limits %s:\t%s\n", c.GetName(), limitsColumn(c))
			}
			for _, w := range st.GetWorkloads() {
				fmt.Fprintf(tw, "workload %s:\t%s\n", w.GetName(), workloadSelectors(w))
			}
			fmt.Fprintf(tw, "master key:\t%s\n", masterKeyLine(st))
			printRotationStatus(tw, st) // rotation.go
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON object")
	return cmd
}

// credentialLimitsJSON is one credential's limits in `status --json`.
type credentialLimitsJSON struct {
	Credential string `json:"credential"`
	limitsJSON
}

func statusLimits(st *credbrokerv1.StatusResponse) []credentialLimitsJSON {
	out := []credentialLimitsJSON{}
	for _, c := range st.GetLimitedCredentials() {
		if l := limitsOf(c); l != nil {
			out = append(out, credentialLimitsJSON{c.GetName(), *l})
		}
	}
	return out
}

func statusWorkloads(st *credbrokerv1.StatusResponse) []workloadJSON {
	out := []workloadJSON{}
	for _, w := range st.GetWorkloads() {
		out = append(out, toWorkloadJSON(w))
	}
	return out
}

// masterKeyJSON is the master key in `status --json`.
type masterKeyJSON struct {
	Source         string   `json:"source"`
	LastKMSContact string   `json:"last_kms_contact,omitempty"`
	KeyVersions    []string `json:"key_versions"`
}

// masterKeyLine is "SOURCE" plus, for a KMS, its key versions and last contact.
func masterKeyLine(st *credbrokerv1.StatusResponse) string {
	line := orDash(st.GetMasterKeySource())
	if vs := st.GetMasterKeyVersions(); len(vs) > 0 {
		line += " (key version " + strings.Join(vs, ",") + ")"
	}
	if t := st.GetMasterKeyLastKmsContact(); t != nil {
		line += "; last KMS contact " + rfc3339(t)
	}
	return line
}
