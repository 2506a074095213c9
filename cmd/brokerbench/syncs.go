package main

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// syncEvents are the syscalls that make data durable; perf counts their kernel tracepoints.
// pwritev2 is brokerd's audit journal writing a group with RWF_DSYNC (the write and its flush in
// one call, store/journal.go); nothing else in brokerd or the floor calls it, and a journal that
// falls back to write-then-fdatasync stops calling it, so each one counted is one sync.
var syncEvents = []string{"syscalls:sys_enter_fdatasync", "syscalls:sys_enter_fsync", "syscalls:sys_enter_sync_file_range", "syscalls:sys_enter_pwritev2"}

// countSyncs starts counting the durability syscalls pid makes (every thread), exactly, with
// `perf stat` on their tracepoints: the kernel counts, the process is not stopped, so it costs
// next to nothing. stop returns the count, or ok false when perf is missing or may not trace.
func countSyncs(pid int) (stop func() (n int64, ok bool)) {
	none := func() (int64, bool) { return 0, false }
	perf, err := exec.LookPath("perf")
	if err != nil || pid <= 0 {
		return none
	}
	var out bytes.Buffer
	cmd := exec.Command(perf, "stat", "-x", ",", "-e", strings.Join(syncEvents, ","), "-p", strconv.Itoa(pid))
	cmd.Stderr = &out
	if cmd.Start() != nil {
		return none
	}
	return func() (int64, bool) {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
		// CSV lines: count,unit,event,...; "<not supported>" or "<not counted>" when perf may not.
		var n int64
		seen := 0
		for _, line := range strings.Split(out.String(), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 || !strings.HasPrefix(f[2], "syscalls:") {
				continue
			}
			v, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, false
			}
			n += v
			seen++
		}
		return n, seen == len(syncEvents)
	}
}
