package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/broker/attest"
	"github.com/credbroker/credbroker/broker/peercred"
)

// cgroup2Dir returns the directory of this process's own cgroup v2 (the cgroup2 mount joined
// with the "0::" line of /proc/self/cgroup) and that line's path, or skips the test.
func cgroup2Dir(t *testing.T) (dir, path string) {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip("no /proc/self/mountinfo:", err)
	}
	var mount string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if f, g := strings.Fields(pre), strings.Fields(post); ok && len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" && f[3] == "/" {
			mount = f[4]
			break
		}
	}
	if mount == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	raw, err = os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skip("no /proc/self/cgroup:", err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mount, p), p
		}
	}
	t.Skip("this process is in no cgroup v2")
	return "", ""
}

// makeCgroup creates dir and the cgroups above it under base (removed at cleanup, deepest first)
// and returns it open, for starting a process in it (SysProcAttr.CgroupFD).
func makeCgroup(t *testing.T, base string, rel ...string) int {
	t.Helper()
	dir := base
	for _, r := range rel {
		dir = filepath.Join(dir, r)
		if err := os.Mkdir(dir, 0o755); os.IsExist(err) {
			continue
		} else if err != nil {
			t.Skip("cannot create a cgroup:", err)
		}
		d := dir
		t.Cleanup(func() {
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				t.Logf("remove cgroup %s: %v", d, err)
			}
		})
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestUnitSelectorNotPassedByUserUnit: a registration for the system unit victim.service
// (--unit alone, as the README allows) is not matched by another user's process that sits in a
// cgroup of that name inside its own user manager (what `systemd-run --user --unit victim` makes,
// or a mkdir in the user's delegated subtree). brokerd used to take the innermost .service of the
// cgroup path, so any local user in the socket group got the workload's token.
func TestUnitSelectorNotPassedByUserUnit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups and run processes as uid 65534 (CI runs as root)")
	}
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	own, ownPath := cgroup2Dir(t)
	// A slice of our own keeps the test's cgroups apart from the machine's; systemd skips slices
	// when it names a unit, so below it the paths read as they would at the root.
	slice := fmt.Sprintf("credbrokertest-%d.slice", os.Getpid())
	attacker := makeCgroup(t, own, slice, "user.slice", "user-65534.slice", "user@65534.service", "app.slice", "victim.service")
	legit := makeCgroup(t, own, slice, "victim.service")

	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper := copyExe(t, e.dir, "mcp-helper")
	e.startDaemon(t, "--socket-group", "65534")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	e.ctl(t, "", "workload", "add", "victim", "--tools", "web_search", "--unit", "victim.service", "--ttl", "10m").ok(t)

	// Another user's process in its own manager's "victim.service": refused, told what it is.
	_, line := e.startHelperIn(t, helper, nobody, nobody, attacker)
	if strings.HasPrefix(line, "TOKEN ") {
		t.Fatalf("a user unit named victim.service got the system unit's token: %q", line)
	}
	if !strings.Contains(line, "victim: unit user@65534.service:victim.service does not match") {
		t.Fatalf("refusal does not name the caller's unit: %q", line)
	}

	// The unit itself (a process systemd started in victim.service) still gets one. Only when our
	// own cgroup names no unit: under a unit (a CI job's service) every cgroup we make is inside it.
	for _, c := range strings.Split(strings.Trim(ownPath, "/"), "/") {
		if c != "" && !strings.HasSuffix(c, ".slice") {
			t.Logf("own cgroup %s is not a slice: the positive case is not checked", ownPath)
			return
		}
	}
	_, line = e.startHelperIn(t, helper, nobody, nobody, legit)
	if !strings.HasPrefix(line, "TOKEN ") {
		t.Fatalf("a process of victim.service refused: %q", line)
	}
}

// readBytes returns how many bytes process pid has read so far (rchar of /proc/PID/io: every
// read(2), whatever it read from).
func readBytes(t *testing.T, pid int) uint64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no rchar in /proc/%d/io", pid)
	return 0
}

// TestFetchTokenDoesNotHashStrangersExecutable: a local user in the socket group, with no token
// and no registration of its own, runs a program padded to 2 GiB (sparse: it costs the user
// nothing) and asks for a token. brokerd used to hash the caller's executable for every
// registration with --exe-sha256, whoever it was for, before any limit: each such FetchToken cost
// it a read of the whole file (minutes of CPU for a terabyte), and the user could send thousands
// at once. Now only a caller every other selector admits is hashed, and only up to 1 GiB.
func TestFetchTokenDoesNotHashStrangersExecutable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the caller as uid 65534 (CI runs as root)")
	}
	if !peercred.PidfdSupported() {
		t.Skip("kernel has no SO_PEERPIDFD (Linux 6.5+): attestation refuses every caller")
	}
	const padded = 2 << 30
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper := copyExe(t, e.dir, "mcp-helper")
	huge := copyExe(t, e.dir, "huge-helper")
	if err := os.Truncate(huge, padded); err != nil {
		t.Skip("no sparse 2 GiB file here:", err)
	}
	sum, err := attest.FileSHA256(helper)
	if err != nil {
		t.Fatal(err)
	}
	e.startDaemon(t, "--socket-group", "65534")
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	e.ctl(t, "", "workload", "add", "other", "--tools", "web_search", "--uid", "4242", "--exe-sha256", sum).ok(t)
	pid := e.daemon.Process.Pid

	for _, tc := range []struct {
		name, add, want string
	}{
		{"stranger", "", "other: uid 65534 does not match"},
		// A registered uid (not trusted either: it needs no token to ask) is hashed, up to 1 GiB.
		{"registered uid", "self", "self: exe digest (executable is 2048 MiB, more than the 1024 MiB brokerd hashes"},
	} {
		if tc.add != "" {
			e.ctl(t, "", "workload", "add", tc.add, "--tools", "web_search", "--uid", "65534", "--exe-sha256", sum).ok(t)
		}
		before := readBytes(t, pid)
		_, line := e.startHelper(t, huge, nobody, nobody)
		read := readBytes(t, pid) - before
		if strings.HasPrefix(line, "TOKEN ") || !strings.Contains(line, tc.want) {
			t.Errorf("%s: %q, want a refusal with %q", tc.name, line, tc.want)
		}
		if read > padded/8 {
			t.Errorf("%s: brokerd read %d MiB for one FetchToken of a caller running a %d MiB file", tc.name, read>>20, padded>>20)
		}
	}
	// The registered program itself still gets its token.
	if _, line := e.startHelper(t, helper, nobody, nobody); !strings.HasPrefix(line, "TOKEN ") {
		t.Fatalf("registered program refused: %q", line)
	}
}
