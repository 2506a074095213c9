package peercred

import (
	"bytes"
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// pidfsMagic is the file system type of pidfds on Linux 6.9+ (pidfs), where a pidfd's inode
// number names its process for the life of the system.
const pidfsMagic = 0x50494446

// PidfdInode returns the inode number of pidfd when pidfds live on pidfs (Linux 6.9+), where it
// is unique to the process: two pidfds with the same inode refer to the same process, whoever
// opened them and whatever /proc shows. 0 on older kernels (every pidfd shares one anonymous
// inode there) or on error. Unlike StartTime it needs no access to /proc/PID, which the shipped
// unit's ProtectProc=invisible hides for other users' processes.
func PidfdInode(pidfd int) uint64 {
	var fs unix.Statfs_t
	if unix.Fstatfs(pidfd, &fs) != nil || fs.Type != pidfsMagic {
		return 0
	}
	var st unix.Stat_t
	if unix.Fstat(pidfd, &st) != nil {
		return 0
	}
	return st.Ino
}

// StartTime returns the start time of process pid (field 22 of /proc/PID/stat, in clock ticks
// since boot). With the pid it names one process for the life of the system: a pid reused by a
// later process has a later start time. Attestation (broker/attest) records it at accept, while
// the connection's pidfd proves the pid is the peer's, and compares it when it opens a pidfd of
// its own later.
func StartTime(pid int32) (uint64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return 0, err
	}
	// comm (field 2) is in parentheses and may hold spaces and parentheses: split after the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	fields := bytes.Fields(raw[i+1:])
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	return strconv.ParseUint(string(fields[19]), 10, 64)
}
