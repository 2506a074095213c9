package daemon

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// hardenProcess keeps decrypted keys out of core dumps and out of reach of same-uid ptrace:
// a non-dumpable process cannot be attached to by unprivileged processes of its own uid, and
// its /proc/PID/mem and environ are root-only.
func hardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		// A seccomp filter may forbid setrlimit; what matters is that the limit is 0 (systemd's
		// LimitCORE=0 sets it before exec).
		var cur unix.Rlimit
		if gerr := unix.Getrlimit(unix.RLIMIT_CORE, &cur); gerr != nil || cur.Cur != 0 || cur.Max != 0 {
			return fmt.Errorf("setrlimit(RLIMIT_CORE, 0): %w", err)
		}
	}
	return nil
}
