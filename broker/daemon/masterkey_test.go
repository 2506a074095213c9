package daemon

import (
	"errors"
	"fmt"
	"testing"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/store"
)

// A failed re-wrap is the KMS's doing unless the database says otherwise; in particular a commit
// of unknown outcome stays ErrOutcomeUnknown (OUTCOME_UNKNOWN), never "KMS unavailable, nothing
// was changed", which a re-wrap that may have landed would contradict.
func TestKMSErrKeepsDatabaseOutcomes(t *testing.T) {
	for _, tc := range []struct {
		err     error
		wantKMS bool
	}{
		{errors.New("kms: connection refused"), true},
		{fmt.Errorf("re-wrap: %w: may now be under the new master key", store.ErrOutcomeUnknown), false},
		{store.ErrSyncFailed, false},
		{fmt.Errorf("x: %w", store.ErrCorrupt), false},
	} {
		got := kmsErr(tc.err)
		if errors.Is(got, broker.ErrKMSUnavailable) != tc.wantKMS || !tc.wantKMS && !errors.Is(got, tc.err) {
			t.Errorf("kmsErr(%v) = %v; want KMS unavailable: %v", tc.err, got, tc.wantKMS)
		}
	}
}
