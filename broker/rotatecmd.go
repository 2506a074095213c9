package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/credbroker/credbroker/broker/upstream"
)

// Limits on a rotate command, enforced when the policy is set and again before each run.
const (
	maxCommandArgs     = 64
	maxCommandArgBytes = 4096
	// DefaultRotateTimeout bounds one run of a rotate command.
	DefaultRotateTimeout = time.Minute
	// commandPath is the whole PATH a rotate command gets: it is started by absolute path, and
	// what it runs itself should not depend on brokerd's environment.
	commandPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// validateCommand checks a rotate command's argv and its program file.
func validateCommand(argv []string) error {
	if len(argv) == 0 {
		return invalid("rotate command is empty")
	}
	if len(argv) > maxCommandArgs {
		return invalid("rotate command has %d arguments; the limit is %d", len(argv), maxCommandArgs)
	}
	total := 0
	for _, a := range argv {
		total += len(a)
		if !utf8.ValidString(a) || bytes.IndexByte([]byte(a), 0) >= 0 {
			return invalid("rotate command arguments must be valid UTF-8 without NUL bytes")
		}
	}
	if total > maxCommandArgBytes {
		return invalid("rotate command is %d bytes long; the limit is %d", total, maxCommandArgBytes)
	}
	return checkProgram(argv[0])
}

// checkProgram refuses a program brokerd must not run: not an absolute path, not an executable
// regular file, or one that someone other than root and brokerd's own user could have written
// (which would let them run code as brokerd, next to the keys). Symlinks are followed: the path
// as typed must be safe (so only a trusted user can have made or can change its links), and so
// must the path they lead to (so a link from a safe directory into someone else's is refused).
func checkProgram(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return invalid("rotate command %q must be a clean absolute path (no shell, no PATH lookup)", path)
	}
	linked, err := checkChain(path, path)
	if err != nil || !linked {
		return err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return invalid("rotate command %q: %v", path, errors.Unwrap(err))
	}
	if _, err := checkChain(path, real); err != nil {
		return fmt.Errorf("%w (the path leads to %s)", err, real)
	}
	return nil
}

// checkChain checks p and every directory above it: owned by root or brokerd's user, writable by
// no one else (a sticky directory aside); p itself must be an executable regular file unless it
// is a symlink. It reports whether any element was a symlink (its target is checked separately).
func checkChain(cmd, p0 string) (linked bool, err error) {
	euid := uint32(os.Geteuid())
	for p := p0; ; p = filepath.Dir(p) {
		st, err := os.Lstat(p)
		if err != nil {
			return linked, invalid("rotate command %q: %v", cmd, errors.Unwrap(err))
		}
		if st.Mode()&os.ModeSymlink != 0 {
			linked = true // a link's own mode means nothing; its directory is checked next
		} else {
			sys, ok := st.Sys().(*syscall.Stat_t)
			if !ok {
				return linked, invalid("rotate command %q: cannot read file ownership", cmd)
			}
			if sys.Uid != 0 && sys.Uid != euid {
				return linked, invalid("rotate command %q: %s is owned by uid %d; it must belong to root or brokerd's user (uid %d)", cmd, p, sys.Uid, euid)
			}
			if st.Mode().Perm()&0o022 != 0 && !(st.IsDir() && st.Mode()&os.ModeSticky != 0) {
				return linked, invalid("rotate command %q: %s is writable by group or others; run `chmod go-w %s`", cmd, p, p)
			}
			if p == p0 {
				if !st.Mode().IsRegular() {
					return linked, invalid("rotate command %q is not a regular file", cmd)
				}
				if st.Mode().Perm()&0o111 == 0 {
					return linked, invalid("rotate command %q is not executable", cmd)
				}
			}
		}
		if p == "/" {
			return linked, nil
		}
	}
}

// capWriter keeps the first limit bytes written to it and remembers whether more came.
type capWriter struct {
	buf   []byte
	limit int
	over  bool
}

func (w *capWriter) Write(p []byte) (int, error) {
	if len(w.buf)+len(p) > w.limit {
		w.over = true
	}
	if room := w.limit - len(w.buf); room > 0 {
		w.buf = append(w.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// wipe zeroes the kept output, which holds a key.
func (w *capWriter) wipe() { clear(w.buf) }

// runRotateCommand runs argv directly (no shell) with a minimal environment, no stdin, its own
// process group and a timeout, and returns the key it printed on stdout (one trailing newline
// removed). Errors never contain the command's output: stdout is the key, and stderr may echo it.
func runRotateCommand(ctx context.Context, argv []string, credential string, version uint64, timeout time.Duration) ([]byte, error) {
	if err := validateCommand(argv); err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultRotateTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{
		commandPath, "LANG=C.UTF-8",
		"CREDBROKER_CREDENTIAL=" + credential,
		"CREDBROKER_CURRENT_VERSION=" + strconv.FormatUint(version, 10),
	}
	cmd.Dir = "/"
	cmd.Stdin = nil // /dev/null
	stdout := &capWriter{limit: MaxCredentialValue + len("\r\n")}
	defer stdout.wipe()
	stderr := &capWriter{limit: 0} // counted, never kept
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Kill the whole process group on timeout, so a script's children die with it; don't wait
	// forever for pipes a lingering grandchild holds open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second

	err := cmd.Run()
	name := filepath.Base(argv[0])
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return nil, fmt.Errorf("rotate command %s timed out after %s", name, timeout)
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return nil, fmt.Errorf("rotate command %s was killed by signal %v", name, ws.Signal())
			}
			return nil, fmt.Errorf("rotate command %s exited with status %d", name, ee.ExitCode())
		}
		if errors.Is(err, exec.ErrWaitDelay) {
			// It exited, but something it started still holds its stdout: kill the group.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			return nil, fmt.Errorf("rotate command %s exited but left a process holding its output; it must not leave background processes", name)
		}
		return nil, fmt.Errorf("rotate command %s could not run: %w", name, errors.Unwrap(err))
	case stdout.over:
		return nil, fmt.Errorf("rotate command %s printed more than %d bytes; it must print only the new key", name, MaxCredentialValue)
	}
	key := bytes.TrimSuffix(stdout.buf, []byte("\n"))
	key = bytes.TrimSuffix(key, []byte("\r"))
	if len(key) == 0 {
		return nil, fmt.Errorf("rotate command %s printed no key on stdout", name)
	}
	if len(key) > MaxCredentialValue { // the cap leaves room for a line ending, not for more key
		return nil, fmt.Errorf("rotate command %s printed more than %d bytes; it must print only the new key", name, MaxCredentialValue)
	}
	if !upstream.HeaderSafe(key) {
		return nil, fmt.Errorf("rotate command %s printed something that is not a key (only visible ASCII, one line)", name)
	}
	return bytes.Clone(key), nil
}
