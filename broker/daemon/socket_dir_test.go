package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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

// A socket directory that another user could replace the socket in (socket squatting) is refused
// with a message naming the directory, its owner and mode; root's, brokerd's own, and sticky
// world-writable directories (like /tmp) are accepted.
func TestListenRefusesSquattableSocketDirectory(t *testing.T) {
	const other = 65534
	for _, tc := range []struct {
		name string
		root bool // needs root (chown to another uid)
		// setup makes the socket's directory under base and returns it.
		setup   func(t *testing.T, base string) string
		wantErr []string // substrings; none: accepted
	}{
		{"own 0750", false, func(t *testing.T, base string) string { return mkdir(t, base, "d", 0o750) }, nil},
		{"own 1777 (sticky, like /tmp)", false, func(t *testing.T, base string) string { return mkdir(t, base, "d", os.ModeSticky|0o777) }, nil},
		{"own 0777 without sticky bit", false, func(t *testing.T, base string) string { return mkdir(t, base, "d", 0o777) },
			[]string{"socket directory ", "/d (owner uid ", "mode 0777", "writable by group or others without the sticky bit", "chmod go-w"}},
		{"own 0770 group-writable", false, func(t *testing.T, base string) string { return mkdir(t, base, "d", 0o770) },
			[]string{"/d (owner uid ", "mode 0770", "writable by group or others"}},
		{"parent 0777 without sticky bit", false, func(t *testing.T, base string) string {
			return mkdir(t, mkdir(t, base, "p", 0o777), "d", 0o750)
		}, []string{"/d is inside ", "/p (owner uid ", "mode 0777"}},
		{"owned by another uid", true, func(t *testing.T, base string) string {
			d := mkdir(t, base, "d", 0o755)
			chown(t, d, other)
			return d
		}, []string{"/d (owner uid 65534", "mode 0755", "owned by another user", "use a directory owned by root or by brokerd's uid 0"}},
		{"parent owned by another uid", true, func(t *testing.T, base string) string {
			p := mkdir(t, base, "p", 0o755)
			chown(t, p, other)
			return mkdir(t, p, "d", 0o750)
		}, []string{"/d is inside ", "/p (owner uid 65534", "owned by another user"}},
		{"symlink owned by another uid", true, func(t *testing.T, base string) string {
			d := mkdir(t, base, "d", 0o750)
			link := filepath.Join(base, "link")
			if err := os.Symlink(d, link); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(link, other, other); err != nil {
				t.Fatal(err)
			}
			return link
		}, []string{"/link is a symlink owned by uid 65534", "point it elsewhere"}},
		{"own symlink to an own directory", false, func(t *testing.T, base string) string {
			d := mkdir(t, base, "d", 0o750)
			link := filepath.Join(base, "link")
			if err := os.Symlink(d, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another uid (CI runs as root)")
			}
			base := t.TempDir()
			if err := os.Chmod(base, 0o755); err != nil {
				t.Fatal(err)
			}
			dir := tc.setup(t, base)
			sock := filepath.Join(dir, "broker.sock")
			lis, err := listen(sock, 0o660, "")
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				lis.Close()
				return
			}
			if err == nil {
				lis.Close()
				t.Fatalf("listen accepted %s", dir)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if _, serr := os.Lstat(sock); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("a socket was created in the refused directory: %v", serr)
			}
		})
	}
}

func mkdir(t *testing.T, parent, name string, mode os.FileMode) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	// Chmod, not Mkdir's mode: the umask must not drop bits, and Mkdir ignores the sticky bit.
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	return d
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}
