package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A missing parent directory of the master keyset (or the database) is created 0700; an existing
// one keeps its mode, whatever it is.
func TestMkdirParent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing os.FileMode // 0: the directories do not exist
		rel      string      // file path under the temp dir
		wantDirs []string    // directories that must end with wantMode
		wantMode os.FileMode
	}{
		{name: "missing", rel: "etc/credbroker/master-keyset.json", wantDirs: []string{"etc", "etc/credbroker"}, wantMode: 0o700},
		{name: "existing 0755 left alone", existing: 0o755, rel: "etc/credbroker/master-keyset.json", wantDirs: []string{"etc", "etc/credbroker"}, wantMode: 0o755},
		{name: "existing 0711 left alone", existing: 0o711, rel: "etc/credbroker/master-keyset.json", wantDirs: []string{"etc/credbroker"}, wantMode: 0o711},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			path := filepath.Join(root, tc.rel)
			if tc.existing != 0 {
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
				for _, d := range tc.wantDirs {
					if err := os.Chmod(filepath.Join(root, d), tc.existing); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Through the command's own path: NewMasterKeyset is what `keyset new --out` runs.
			if err := NewMasterKeyset(path); err != nil {
				t.Fatalf("NewMasterKeyset: %v", err)
			}
			for _, d := range tc.wantDirs {
				st, err := os.Stat(filepath.Join(root, d))
				if err != nil {
					t.Fatal(err)
				}
				if got := st.Mode().Perm(); got != tc.wantMode {
					t.Errorf("%s: mode %#o, want %#o", d, got, tc.wantMode)
				}
			}
			st, err := os.Stat(path)
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("keyset file: %v %v", st, err)
			}
			if _, err := LoadMasterKeyset(path); err != nil {
				t.Fatalf("the written keyset does not load: %v", err)
			}
		})
	}
}

// A parent that cannot be created is reported with both paths.
func TestMkdirParentFails(t *testing.T) {
	root := t.TempDir()
	blocker := filepath.Join(root, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := NewMasterKeyset(filepath.Join(blocker, "sub", "k.json"))
	if err == nil {
		t.Fatal("want an error: the parent path runs through a regular file")
	}
	if want := "create directory " + filepath.Join(blocker, "sub"); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
