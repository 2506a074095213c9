package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// listen creates a missing socket directory 0750 (clients in --socket-group must reach the socket
// inside it) and never changes the mode of one that exists.
func TestListenSocketDirectory(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing os.FileMode // 0: missing
		want     os.FileMode
	}{
		{"missing: created 0750", 0, 0o750},
		{"existing 0755 left alone", 0o755, 0o755},
		{"existing 0700 left alone", 0o700, 0o700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run", "credbroker")
			if tc.existing != 0 {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			lis, err := listen(filepath.Join(dir, "broker.sock"), 0o660, "")
			if err != nil {
				t.Fatal(err)
			}
			lis.Close()
			st, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode().Perm(); got != tc.want {
				t.Fatalf("socket directory mode %#o, want %#o", got, tc.want)
			}
		})
	}
}
