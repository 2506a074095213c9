package main

// TestReadmeFirstRun runs the README's first-run shell blocks as written, so the README stays a
// working recipe on a fresh machine.

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/logtest"
	"github.com/credbroker/credbroker/broker/upstream/scaviotest"
)

// readmeBlock is one ```sh block of README.md preceded by a marker line
//
//	<!-- readme-test: GROUP -->             run with bash, must exit 0
//	<!-- readme-test: GROUP background -->  a process left running in its own terminal
type readmeBlock struct {
	group      string
	background bool
	line       int // of the marker, for messages
	script     string
}

var readmeMarkerRE = regexp.MustCompile(`^<!-- readme-test: ([a-z][a-z-]*)( background)? -->$`)

func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks []readmeBlock
		cur    *readmeBlock
		fence  bool // inside the marked block's fence
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case fence && line == "```":
			blocks = append(blocks, *cur)
			cur, fence = nil, false
		case fence:
			cur.script += line + "\n"
		case cur != nil:
			if line != "```sh" {
				t.Fatalf("%s:%d: the readme-test marker must be followed by a ```sh line, got %q", path, cur.line, line)
			}
			fence = true
		default:
			if m := readmeMarkerRE.FindStringSubmatch(line); m != nil {
				cur = &readmeBlock{group: m[1], background: m[2] != "", line: n}
			} else if strings.HasPrefix(line, "<!-- readme-test") {
				t.Fatalf("%s:%d: malformed marker %q", path, n, line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: marked block never closed", path, cur.line)
	}
	return blocks
}

// readmeRun runs the README's blocks, one group at a time, under a temp root. What the test
// changes, and nothing else:
//
//   - the absolute paths in readmeRootedPaths are moved under the temp root (so /etc/credbroker
//     becomes ROOT/etc/credbroker); of them only ROOT/usr/local/bin exists beforehand, as on a
//     fresh machine;
//   - a leading "sudo " is dropped (the temp root needs no privileges);
//   - https://api.scavio.dev becomes an in-process fake Scavio that accepts itKey, and the
//     manual-path blocks get itKey on stdin, as an operator types or pipes it;
//   - the fixed port 127.0.0.1:8931 of the try-it path becomes port 0 for fakescavio, and its
//     announced address in the blocks after it;
//   - PATH starts with ROOT/usr/local/bin (where the install block puts the binaries), TMPDIR is
//     ROOT/tmp, and no CREDBROKER_* variable is inherited.
//
// Blocks run with bash -e -o pipefail in the checkout's root. A background block is started in its
// own process group and is ready when it logs its ready line (fakescavio's "listening on", brokerd's
// "brokerd serving"); at the end of its group it gets SIGINT, as Ctrl-C in its terminal, and must
// exit 0.
type readmeRun struct {
	t        *testing.T
	root     string
	checkout string
	env      []string
	subst    []string // old, new pairs, applied in order
}

var readmeRootedPaths = []string{"/etc/credbroker", "/var/lib/credbroker", "/run/credbroker", "/usr/local/bin", "/tmp/credbroker-try"}

var (
	fakeReadyRE    = regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`)
	brokerdReadyRE = regexp.MustCompile(`msg="brokerd serving"`)
	sudoRE         = regexp.MustCompile(`(?m)^(\s*)sudo `)
)

func (r *readmeRun) rewrite(script string) string {
	script = sudoRE.ReplaceAllString(script, "$1")
	for _, p := range readmeRootedPaths {
		script = strings.ReplaceAll(script, p, filepath.Join(r.root, p))
	}
	for i := 0; i+1 < len(r.subst); i += 2 {
		script = strings.ReplaceAll(script, r.subst[i], r.subst[i+1])
	}
	return script
}

func (r *readmeRun) command(ctx context.Context, b readmeBlock) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", r.rewrite(b.script))
	cmd.Dir, cmd.Env = r.checkout, r.env
	return cmd
}

// foreground runs b to completion and returns what it printed.
func (r *readmeRun) foreground(b readmeBlock, stdin string) string {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // go install on a busy machine
	defer cancel()
	cmd := r.command(ctx, b)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README.md:%d (%s) failed: %v\nscript:\n%s\noutput:\n%s", b.line, b.group, err, r.rewrite(b.script), out)
	}
	return string(out)
}

// bgProc is a background block's process.
type bgProc struct {
	b    readmeBlock
	cmd  *exec.Cmd
	out  *logtest.Buffer
	done chan struct{} // closed when it has exited; err is its exit status then
	err  error
}

// background starts b and waits until it is ready; the returned strings are the ready line's
// submatches (fakescavio's address).
func (r *readmeRun) background(b readmeBlock) (*bgProc, []string) {
	t := r.t
	t.Helper()
	var ready *regexp.Regexp
	switch {
	case strings.Contains(b.script, "fakescavio"):
		ready = fakeReadyRE
	case strings.Contains(b.script, "brokerd "):
		ready = brokerdReadyRE
	default:
		t.Fatalf("README.md:%d: a background block must start fakescavio or brokerd, the test knows no ready line for:\n%s", b.line, b.script)
	}
	p := &bgProc{b: b, cmd: r.command(context.Background(), b), out: &logtest.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own "terminal": Ctrl-C reaches all of it
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("README.md:%d (%s) exited before it was ready: %v\n%s", b.line, b.group, p.err, p.out.String())
		default:
		}
		if m := ready.FindStringSubmatch(p.out.String()); m != nil {
			return p, m[1:]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("README.md:%d (%s) not ready in time:\n%s", b.line, b.group, p.out.String())
	return nil, nil
}

// interrupt sends SIGINT to the process group, as Ctrl-C does, and requires a clean exit.
func (r *readmeRun) interrupt(p *bgProc) {
	t := r.t
	t.Helper()
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("README.md:%d (%s) did not stop on Ctrl-C:\n%s", p.b.line, p.b.group, p.out.String())
	}
	if p.err != nil {
		t.Fatalf("README.md:%d (%s) stopped with %v on Ctrl-C:\n%s", p.b.line, p.b.group, p.err, p.out.String())
	}
}

// group runs one group's blocks in README order and returns the foreground blocks' output.
func (r *readmeRun) group(blocks []readmeBlock, stdin string) string {
	t := r.t
	t.Helper()
	var (
		running []*bgProc
		out     strings.Builder
	)
	for _, b := range blocks {
		if !b.background {
			out.WriteString(r.foreground(b, stdin))
			continue
		}
		p, m := r.background(b)
		running = append(running, p)
		if len(m) > 0 && m[0] != "" { // fakescavio's address replaces the README's fixed one
			r.subst = append(r.subst, "http://127.0.0.1:8931", m[0])
		}
	}
	for i := len(running) - 1; i >= 0; i-- { // brokerd before the upstream it calls
		r.interrupt(running[i])
	}
	return out.String()
}

func TestReadmeFirstRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and installs the binaries through the README's own commands")
	}
	checkout, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string][]readmeBlock{}
	for _, b := range readmeBlocks(t, filepath.Join(checkout, "README.md")) {
		groups[b.group] = append(groups[b.group], b)
	}
	// The manual path must be the whole first run, not whatever is left of it.
	for group, steps := range map[string][]string{
		"install":     {"go install ./cmd/brokerd ./cmd/brokerctl ./cmd/scavio-mcp", "/usr/local/bin"},
		"manual-path": {"brokerctl keyset new", "brokerd --socket", "brokerctl credential put scavio_api_key", "brokerctl token mint", "brokerctl search"},
		"try-it":      {"go build -o /tmp/credbroker-try/ ./cmd/fakescavio", "fakescavio --keys-file", "brokerd --socket", "brokerctl credential put scavio_api_key", "brokerctl token mint", "brokerctl search"},
	} {
		var all strings.Builder
		for _, b := range groups[group] {
			all.WriteString(b.script)
		}
		for _, s := range steps {
			if !strings.Contains(all.String(), s) {
				t.Fatalf("README.md's %s blocks lack %q:\n%s", group, s, all.String())
			}
		}
	}

	// Short: Unix socket paths are limited to 108 bytes.
	root, err := os.MkdirTemp("", "cbr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// What a fresh machine has: /tmp and /usr/local/bin.
	for _, d := range []string{"tmp", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDBROKER_") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+filepath.Join(root, "usr/local/bin")+string(os.PathListSeparator)+os.Getenv("PATH"), "TMPDIR="+filepath.Join(root, "tmp"))
	r := &readmeRun{t: t, root: root, checkout: checkout, env: env}

	r.group(groups["install"], "")
	for _, name := range []string{"brokerd", "brokerctl", "scavio-mcp"} {
		assertMode(t, filepath.Join(root, "usr/local/bin", name), 0o755)
	}

	t.Run("manual-path", func(t *testing.T) {
		r.t = t
		fake := scaviotest.NewServer(itKey)
		t.Cleanup(fake.Close)
		r.subst = []string{"https://api.scavio.dev", fake.URL}
		out := r.group(groups["manual-path"], itKey+"\n")
		if !strings.HasSuffix(strings.TrimSpace(out), "Results: 5") {
			t.Fatalf("the manual path does not end in a search with results:\n%s", out)
		}
		if strings.Contains(out, itKey) {
			t.Fatal("the manual path printed the key")
		}
		if reqs := fake.Requests(); len(reqs) == 0 {
			t.Fatal("the search never reached the upstream")
		}
		for _, d := range []string{"etc/credbroker", "var/lib/credbroker"} {
			assertMode(t, filepath.Join(root, d), 0o700) // created by keyset new and brokerd
		}
	})

	t.Run("try-it", func(t *testing.T) {
		r.t = t
		r.subst = []string{"--listen 127.0.0.1:8931", "--listen 127.0.0.1:0"}
		out := r.group(groups["try-it"], "")
		if !strings.Contains(out, "Results: 5") {
			t.Fatalf("the try-it path did not search:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(root, "tmp/credbroker-try/broker.sock")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("brokerd left its socket behind after Ctrl-C: %v", err)
		}
	})
}
