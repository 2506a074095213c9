package metrics

import (
	"errors"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// gather returns the registry's first sample of each family: counter or gauge value, or a
// histogram's sample count.
func gather(t *testing.T) (map[string]float64, map[string]*dto.MetricFamily) {
	t.Helper()
	mfs, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values, families := map[string]float64{}, map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		families[mf.GetName()] = mf
		if len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			values[mf.GetName()] = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			values[mf.GetName()] = m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			values[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
		}
	}
	return values, families
}

// The helpers other packages call land in the exposed registry under the documented names.
func TestHelpersExposeDocumentedSeries(t *testing.T) {
	before, _ := gather(t)
	SetBuildInfo("1.2.3-test")
	RotationSucceeded("scavio_api_key")
	RotationFailed("scavio_api_key")
	SetCredentialsDue(2)
	ObserveAuditWrite(3 * time.Millisecond)
	ObserveAuditCommit(5, 2*time.Millisecond, nil)
	ObserveAuditCommit(7, time.Millisecond, errors.New("disk full")) // failed: no records counted
	ObserveAuditPrune(1000, 4*time.Millisecond, nil)
	ObserveAuditPrune(9, time.Millisecond, errors.New("disk full")) // failed: nothing pruned

	if CredentialsDueCount() != 2 {
		t.Fatalf("CredentialsDueCount = %d", CredentialsDueCount())
	}
	after, families := gather(t)
	for name, delta := range map[string]float64{
		"credbroker_credential_rotations_total":         1,
		"credbroker_credential_rotation_failures_total": 1,
		"credbroker_audit_write_duration_seconds":       1,
		"credbroker_audit_committed_records_total":      5,
		"credbroker_audit_commit_duration_seconds":      1,
		"credbroker_audit_pruned_records_total":         1000,
		"credbroker_audit_prune_batch_duration_seconds": 1,
	} {
		if got := after[name] - before[name]; got != delta {
			t.Errorf("%s went up by %v, want %v", name, got, delta)
		}
	}
	if after["credbroker_audit_last_prune_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("audit_last_prune_timestamp_seconds = %v, want about now", after["credbroker_audit_last_prune_timestamp_seconds"])
	}
	if after["credbroker_credentials_due"] != 2 || after["credbroker_build_info"] != 1 {
		t.Errorf("credentials_due = %v, build_info = %v", after["credbroker_credentials_due"], after["credbroker_build_info"])
	}
	// Fixed-label series exist before anything happens, so dashboards see 0, not "no data".
	for _, name := range []string{"credbroker_token_validations_total", "credbroker_master_keyset_reloads_total", "credbroker_audit_prune_batches_total"} {
		if mf := families[name]; mf == nil || len(mf.GetMetric()) != 2 {
			t.Errorf("%s: want both results exposed, got %v", name, mf)
		}
	}
}
