package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/broker/attest"
	"github.com/credbroker/credbroker/broker/peercred"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
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

// procSubsetPid is a shell script that mounts /proc as the shipped unit's ProtectProc=invisible
// and ProcSubset=pid do (in a mount namespace of its own: run under unshare --mount), then execs
// its arguments.
const procSubsetPid = `mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$0" "$@"`

// TestHelperHoldTCP is not a test: TestHTTPFrontTCPUnderProcSubsetPid runs this binary as another
// uid to hold keep-alive connections to the HTTP front, each after one request (refused: no
// token), until its stdin closes.
func TestHelperHoldTCP(t *testing.T) {
	addr := os.Getenv("CREDBROKER_HOLD_TCP")
	if addr == "" {
		t.Skip("helper process for TestHTTPFrontTCPUnderProcSubsetPid")
	}
	var held []net.Conn
	for range 40 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			continue
		}
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", scaviotest.SearchPath)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.Close {
			c.Close()
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		held = append(held, c)
	}
	fmt.Printf("HOLD %d\n", len(held))
	io.Copy(io.Discard, os.Stdin)
}

// TestHTTPFrontTCPUnderProcSubsetPid: brokerd under the shipped unit sees a /proc without
// /proc/net (ProcSubset=pid). It used to read the loopback peer's uid from /proc/net/tcp, so there
// it named no TCP client: a token bound to the caller's uid was refused to its owner, and every
// TCP client counted as one uid, so one local user holding --max-conns-per-uid idle connections,
// without a token, locked every other user out of the HTTP front.
func TestHTTPFrontTCPUnderProcSubsetPid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount /proc and run clients as other uids (CI runs as root)")
	}
	curl, err1 := exec.LookPath("curl")
	unshare, err2 := exec.LookPath("unshare")
	if err1 != nil || err2 != nil {
		t.Skip("needs curl and unshare (util-linux)")
	}
	probe := exec.Command(unshare, "--mount", "--propagation", "private", "--", "sh", "-c", procSubsetPid, "sh", "-c", "test ! -e /proc/net && test -e /proc/self/net/tcp")
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("cannot mount a /proc with subset=pid here: %v %s", err, out)
	}
	e := newEnv(t)
	for _, d := range []string{binDir, e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := e.daemonCmd("--http-listen", "127.0.0.1:0")
	cmd.Args = append([]string{unshare, "--mount", "--propagation", "private", "--", "sh", "-c", procSubsetPid}, cmd.Args...)
	cmd.Path = unshare
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.daemon = cmd
	e.waitHealthy(t)
	e.ctl(t, itKey+"\n", "credential", "put", "scavio_api_key").ok(t)
	var base string
	for base == "" {
		if m := httpFrontAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			base = "http://" + m[1]
		}
		if e.daemon.ProcessState != nil {
			t.Fatalf("brokerd exited: %s", e.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	search := func(uid uint32, tok string) string {
		t.Helper()
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base+scaviotest.SearchPath,
			"-H", "x-api-key: "+tok, "-H", "Content-Type: application/json", "-d", `{"query": "q"}`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, _ := cmd.Output() // a connection closed at accept is curl's "000" and a failure
		return string(out)
	}
	mint := func(args ...string) string {
		return strings.TrimSpace(e.ctl(t, "", append([]string{"token", "mint", "--tools", "web_search"}, args...)...).ok(t).stdout)
	}

	// A token bound to a uid works for that uid over loopback TCP.
	if got := search(nobody, mint("--bind-uid", "65534")); got != "200" {
		t.Fatalf("uid 65534 with its own bound token: HTTP %s, want 200", got)
	}

	// uid 65534 holds as many connections as it may; another user still gets in.
	hold := exec.Command(copyExe(t, e.dir, "holder"), "-test.run", "^TestHelperHoldTCP$")
	hold.Env = []string{"CREDBROKER_HOLD_TCP=" + strings.TrimPrefix(base, "http://")}
	hold.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	in, _ := hold.StdinPipe()
	out, _ := hold.StdoutPipe()
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); hold.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "HOLD ") {
		t.Fatalf("holder: %q", sc.Text())
	}
	t.Logf("uid 65534 holds %s connections", strings.TrimPrefix(sc.Text(), "HOLD "))
	if got := search(nobody-1, mint()); got != "200" {
		t.Fatalf("uid 65533 while uid 65534 holds its connections: HTTP %s, want 200", got)
	}
}

// TestHTTPFrontTCPLookupIsNotAScan: naming a loopback TCP client used to mean reading the whole of
// /proc/net/tcp at every accept, in the one goroutine that accepts. Any local user makes that
// table as long as it likes (its own loopback connections; each connection it closes stays a
// minute in TIME_WAIT), so a connect loop of three processes, no token, kept the HTTP front's
// accept queue full and other clients' connections timing out (measured: p90 over 20 s with a
// table of a few thousand entries). Now the kernel looks the one socket up (sock_diag): what
// brokerd reads per connection does not grow with the table.
func TestHTTPFrontTCPLookupIsNotAScan(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to read brokerd's /proc/PID/io (brokerd is not dumpable)")
	}
	// 3,000 established loopback connections (6,000 table entries) of our own.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3000 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Skip("cannot open 3,000 loopback connections here:", err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c, s)
	}
	table, _ := os.ReadFile("/proc/self/net/tcp")

	e := newEnv(t)
	e.startDaemon(t, "--http-listen", "127.0.0.1:0")
	var addr string
	for addr == "" {
		if m := httpFrontAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			addr = m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	const conns = 50
	before := readBytes(t, e.daemon.Process.Pid)
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", scaviotest.SearchPath)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode/100 != 4 {
			t.Fatalf("no token, no query: HTTP %d, want a refusal", resp.StatusCode)
		}
	}
	read := readBytes(t, e.daemon.Process.Pid) - before
	t.Logf("brokerd read %d bytes for %d connections (the socket table is %d bytes)", read, conns, len(table))
	// A request and its headers are about 150 bytes; one read of the table is a page at least.
	if read > conns*2048 {
		t.Fatalf("brokerd read %d KiB for %d connections: it reads the %d KiB socket table per connection", read>>10, conns, len(table)>>10)
	}
}

// TestHTTPFrontPeerGoneIsNotLogged: a client that resets its connection before brokerd names it
// is nothing an operator can act on; brokerd used to log a warning for each, so a local user's
// connect-and-reset loop, without a token, wrote thousands of log lines a second (measured: 102k
// lines, 24 MB, in 15 s from three processes).
func TestHTTPFrontPeerGoneIsNotLogged(t *testing.T) {
	e := newEnv(t)
	e.startDaemon(t, "--http-listen", "127.0.0.1:0")
	var addr string
	for addr == "" {
		if m := httpFrontAddrRE.FindStringSubmatch(e.stderr.String()); m != nil {
			addr = m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	const resets = 200
	for range resets {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).SetLinger(0) // close sends RST: the client's socket is gone at once
		c.Close()
	}
	// One whole request after them: the accept loop has seen every reset connection by then.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", scaviotest.SearchPath)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.Close()
	if n := strings.Count(e.stderr.String(), "cannot tell the uid"); n > 0 {
		t.Fatalf("%d log lines for %d connections reset by their clients", n, resets)
	}
}
