package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is 100 on every Linux
// architecture Go supports (the kernel fixes it for user space, whatever CONFIG_HZ is).
const clockTicks = 100

// procCPU returns the user+system CPU seconds a process (all its threads) has used so far.
// pid 0 means this process.
func procCPU(pid int) (float64, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces: count fields after the
	// last ')'. utime and stime are fields 14 and 15, i.e. the 12th and 13th after the name.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	return float64(ut+st) / clockTicks, nil
}

// memInfo is a process's memory from /proc/PID/status, in bytes. RSS (VmRSS) is Anon (heap,
// stacks) plus File (mapped files: the bbolt mmap and the binary) plus shared memory. Exe is the
// part of File that is the process's own executable (from /proc/PID/smaps).
type memInfo struct {
	RSS  int64 `json:"vm_rss"`
	HWM  int64 `json:"vm_hwm"`
	Anon int64 `json:"rss_anon"`
	File int64 `json:"rss_file"`
	Exe  int64 `json:"rss_exe"`
}

func procMem(pid int) (memInfo, error) {
	var m memInfo
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &m.RSS
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &m.HWM
		case strings.HasPrefix(line, "RssAnon:"):
			dst = &m.Anon
		case strings.HasPrefix(line, "RssFile:"):
			dst = &m.File
		default:
			continue
		}
		*dst = kiB(line)
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	m.Exe = exeRSS(pid)
	return m, nil
}

// kiB is the value of a /proc "Name:   12345 kB" line, in bytes.
func kiB(line string) int64 {
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return 0
	}
	kb, _ := strconv.ParseInt(fields[1], 10, 64)
	return kb << 10
}

// exeRSS sums the resident pages of the mappings of pid's own executable (0 if unknown).
func exeRSS(pid int) int64 {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0
	}
	var total int64
	mine := false
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			// A mapping's header: "start-end perms offset dev inode [path]".
			mine = len(f) >= 6 && f[5] == exe
		case mine && f[0] == "Rss:":
			total += kiB(line)
		}
	}
	return total
}

// maxMem keeps the largest of each field.
func (m *memInfo) maxWith(o memInfo) {
	m.RSS, m.HWM, m.Anon, m.File = max(m.RSS, o.RSS), max(m.HWM, o.HWM), max(m.Anon, o.Anon), max(m.File, o.File)
	m.Exe = max(m.Exe, o.Exe)
}

// systemCPU returns the machine's busy and stolen CPU seconds since boot (all cores, from the
// first line of /proc/stat). Busy excludes idle, iowait and steal; steal is time the hypervisor
// gave this VM's CPUs to someone else.
func systemCPU() (busy, steal float64, err error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected format")
	}
	// user nice system idle iowait irq softirq steal (guest and guest_nice are already counted in
	// user and nice).
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	b := v[0] + v[1] + v[2] + v[5] + v[6]
	return float64(b) / clockTicks, float64(v[7]) / clockTicks, nil
}

// cpuModel returns the CPU model name from /proc/cpuinfo.
func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// kernelRelease returns the running kernel's release string.
func kernelRelease() string {
	raw, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(raw))
}

// procWriteBytes returns the bytes a process has caused to be written to storage
// (write_bytes in /proc/PID/io): the database pages and fsyncs of brokerd, nothing for sockets.
func procWriteBytes(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/io: no write_bytes", pid)
}
