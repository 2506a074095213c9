package attest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/broker/peercred"
)

// Pinned is a pidfd for a caller, proven to be the process that connected. Close it when done;
// Watch takes ownership of it instead.
type Pinned struct {
	pid   int32
	pidfd int
}

// Pin opens a pidfd for pid and checks it is the process the connection's pidfd named at accept:
// on Linux 6.9+ by the pidfd's inode on pidfs (inode, unique per process, needs no /proc), else
// by the start time read then (peercred.AuthInfo.StartTime; a pid reused since has a later one).
// The order matters as in peercred.identify: open the pidfd, read, then check that the pidfd's
// process is still not reaped, so what was read is the pinned process's.
func Pin(pid int32, startTime, inode uint64) (*Pinned, error) {
	if pid <= 0 || (startTime == 0 && inode == 0) {
		return nil, fmt.Errorf("%w: brokerd could not pin the caller with a pidfd when it connected (Linux 6.5+ needed)", ErrUnidentified)
	}
	fd, err := unix.PidfdOpen(int(pid), unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("%w: the process has exited", ErrUnidentified)
	}
	p := &Pinned{pid: pid, pidfd: fd}
	same := false
	if inode != 0 {
		same = peercred.PidfdInode(fd) == inode
	} else if st, err := peercred.StartTime(pid); err == nil {
		same = st == startTime
	}
	if !same || !p.alive() {
		p.Close()
		return nil, fmt.Errorf("%w: the process that connected has exited", ErrUnidentified)
	}
	return p, nil
}

// alive reports whether the pinned process has not been reaped, so /proc/PID is still its own.
func (p *Pinned) alive() bool {
	pid, err := peercred.PidfdPID(p.pidfd)
	return err == nil && pid == p.pid
}

// Close releases the pidfd.
func (p *Pinned) Close() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// InspectContext reads what attestation matches on. uid, gid and groups are SO_PEERCRED's and
// SO_PEERGROUPS's (the credentials the process connected with; groups nil when the kernel could not
// say); exe, unit and, without groups, the supplementary groups come from /proc, then the pidfd is
// checked again so they cannot belong to a process that reused the pid. The kernel's groups need
// no /proc, which the shipped unit's ProtectProc=invisible hides for other users' processes. The
// executable's digest, if a registration needs it, is computed only while ctx lasts, in the uid's
// turn (digestCache.turn).
func (p *Pinned) InspectContext(ctx context.Context, uid, gid uint32, groups []uint32) (*Process, error) {
	dir := "/proc/" + strconv.Itoa(int(p.pid))
	proc := &Process{PID: p.pid, UID: uid, GID: gid, Groups: groups}
	if groups == nil {
		if raw, err := os.ReadFile(dir + "/status"); err == nil {
			proc.Groups = parseGroups(raw)
		}
	}
	if exe, err := os.Readlink(dir + "/exe"); err == nil {
		proc.Exe = exe
		exePath := dir + "/exe"
		proc.digest = func() (string, error) { return digests.sum(ctx, exePath, p, uid) }
	}
	if raw, err := os.ReadFile(dir + "/cgroup"); err == nil {
		proc.Unit = parseUnit(raw)
	} else {
		proc.UnitUnreadable = true
	}
	if !p.alive() {
		return nil, fmt.Errorf("%w: the process exited while brokerd looked at it", ErrUnidentified)
	}
	return proc, nil
}

// parseGroups returns the supplementary groups of a /proc/PID/status.
func parseGroups(status []byte) []uint32 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []uint32
		for _, f := range strings.Fields(v) {
			if g, err := strconv.ParseUint(f, 10, 32); err == nil {
				out = append(out, uint32(g))
			}
		}
		return out
	}
	return nil
}

// parseUnit returns the systemd unit of a /proc/PID/cgroup as systemd itself names it
// (sd_pid_get_unit): in the cgroup v2 path, the first component after the slices
// ("0::/system.slice/scavio-mcp.service/sub" is scavio-mcp.service), or "" for none. Never a
// deeper component: below a unit, names are whatever the unit's processes chose (a unit with
// Delegate=yes creates its own cgroups), so a process there could call its cgroup after any
// other unit. For the same reason a unit of a user's own manager is qualified with that manager,
// "user@1000.service:mcp.service": the manager's subtree is the user's to write, and any user can
// start a user unit called scavio-mcp.service, which must not pass for the system unit of that name.
func parseUnit(cgroup []byte) string {
	for line := range strings.SplitSeq(string(cgroup), "\n") {
		path, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		unit, below := firstUnit(strings.Split(strings.Trim(path, "/"), "/"))
		if strings.HasPrefix(unit, "user@") && strings.HasSuffix(unit, ".service") {
			if user, _ := firstUnit(below); user != "" {
				return unit + ":" + user
			}
		}
		return unit
	}
	return ""
}

// firstUnit skips the slices at the head of parts and returns the unit that follows them (a
// ".service" or ".scope") and the components below it; "" when what follows is not a unit.
func firstUnit(parts []string) (string, []string) {
	for i, p := range parts {
		if strings.HasSuffix(p, ".slice") {
			continue
		}
		if strings.HasSuffix(p, ".service") || strings.HasSuffix(p, ".scope") {
			return p, parts[i+1:]
		}
		return "", nil
	}
	return "", nil
}

// fileKey identifies an executable's content well enough to reuse its digest: a replaced file
// changes its inode, a rewritten one its change time. The modification time alone is not enough:
// the file's owner can put it back (utimensat) after rewriting the file in place at the same size,
// and the old digest would then admit the new program. The change time only the kernel sets.
type fileKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime time.Time
}

// digestCache keeps executables' sha256 by fileKey, so a program that fetches a token every few
// minutes is hashed once. Bounded: past maxDigests it starts over.
type digestCache struct {
	mu    sync.Mutex
	m     map[fileKey]string
	turns map[uint32]*uidTurn // see turn
}

const maxDigests = 1024

// maxExeSize bounds the executable brokerd hashes for an --exe-sha256 selector: far above any
// real program (node is about 100 MiB), and about a second of one core, so a caller cannot make a
// FetchToken cost brokerd minutes of CPU with a huge (sparse) file it runs.
const maxExeSize = 1 << 30

var digests = &digestCache{m: make(map[fileKey]string), turns: make(map[uint32]*uidTurn)}

// turn waits until no other executable of uid is being hashed, or ctx ends. One uid hashes one
// file at a time, whatever it sends at once: a FetchToken needs no token, and a uid a
// registration admits picks the file (up to maxExeSize, changed between calls so that no digest
// is cached), so its thousands of concurrent calls would otherwise keep every core busy. Other
// uids are not held up by it.
func (c *digestCache) turn(ctx context.Context, uid uint32) (release func(), err error) {
	c.mu.Lock()
	t := c.turns[uid]
	if t == nil {
		t = &uidTurn{slot: make(chan struct{}, 1)}
		c.turns[uid] = t
	}
	t.waiting++
	c.mu.Unlock()
	leave := func() {
		c.mu.Lock()
		if t.waiting--; t.waiting == 0 {
			delete(c.turns, uid)
		}
		c.mu.Unlock()
	}
	select {
	case t.slot <- struct{}{}:
		return func() { <-t.slot; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}

// uidTurn is one uid's hashing slot, and how many calls hold or wait for it.
type uidTurn struct {
	slot    chan struct{}
	waiting int
}

// hashing, when set (tests), is called as a hash starts, with the caller's uid.
var hashing func(uid uint32)

// ctxReader stops reading once ctx ends: a call that gave up is not hashed for to the end.
type ctxReader struct {
	ctx  context.Context
	r    io.Reader
	left int64 // the file's size when it was checked against maxExeSize: more means it grew since
}

func (r *ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, fmt.Errorf("the call ended while brokerd hashed it: %w", err)
	}
	n, err := r.r.Read(b)
	if r.left -= int64(n); r.left < 0 {
		// The size bound holds for what is read, not only for what stat said; and a digest of
		// a file that changed meanwhile names neither version.
		return n, errors.New("the executable grew while brokerd hashed it; try again")
	}
	return n, err
}

// sum returns the sha256 of the file at exePath (a /proc/PID/exe link, which opens the very file
// the process runs even if its path was replaced since), checking p is still alive afterwards.
// A digest not cached is computed in uid's turn (turn), and given up when ctx ends.
func (c *digestCache) sum(ctx context.Context, exePath string, p *Pinned, uid uint32) (string, error) {
	f, err := os.Open(exePath)
	if err != nil {
		return "", fmt.Errorf("executable unreadable by brokerd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return "", fmt.Errorf("executable: no stat")
	}
	if fi.Size() > maxExeSize {
		return "", fmt.Errorf("executable is %d MiB, more than the %d MiB brokerd hashes; register it by --exe and --uid or --unit instead of a digest",
			fi.Size()>>20, maxExeSize>>20)
	}
	key := fileKey{dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), mtime: fi.ModTime(), ctime: time.Unix(st.Ctim.Unix())}
	c.mu.Lock()
	d, ok := c.m[key]
	c.mu.Unlock()
	if !ok {
		release, err := c.turn(ctx, uid)
		if err != nil {
			return "", fmt.Errorf("executable: the call ended while it waited to be hashed: %w", err)
		}
		c.mu.Lock()
		d, ok = c.m[key] // hashed meanwhile, by a call that held the turn
		c.mu.Unlock()
		if !ok {
			if hashing != nil {
				hashing(uid)
			}
			d, err = readerSHA256(&ctxReader{ctx: ctx, r: f, left: fi.Size()})
		}
		release()
		if err != nil {
			return "", fmt.Errorf("executable: %w", err)
		}
		c.mu.Lock()
		if len(c.m) >= maxDigests {
			clear(c.m)
		}
		c.m[key] = d
		c.mu.Unlock()
	}
	if !p.alive() {
		return "", fmt.Errorf("%w: the process exited while brokerd looked at it", ErrUnidentified)
	}
	return d, nil
}

// Watch calls onExit once the pinned process exits (its pidfd turns readable), unless stop was
// closed before the exit was seen. It takes ownership of p. The wait is on Go's netpoller (the pidfd is
// non-blocking), so a thousand watched processes cost a thousand parked goroutines, not threads.
// closed is closed once the watch is over: its pidfd closed, and onExit, if called, returned.
func (p *Pinned) Watch(stop <-chan struct{}, onExit func()) (closed <-chan struct{}, err error) {
	f := os.NewFile(uintptr(p.pidfd), "pidfd")
	p.pidfd = -1
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	exited, done := make(chan struct{}), make(chan struct{})
	readable := func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return err == nil && n > 0
	}
	go func() {
		var seen bool
		// Read returns once fn reports the pidfd readable, or with an error when f is closed
		// (stop): only the first is an exit.
		rc.Read(func(fd uintptr) bool { seen = readable(fd); return seen })
		if seen {
			close(exited)
		}
	}()
	go func() {
		select {
		case <-exited:
			f.Close()
			select {
			case <-stop: // stopped before the exit was seen: the watch is over
			default:
				onExit()
			}
			close(done)
		case <-stop:
			f.Close() // ends the Read above with an error
			close(done)
		}
	}()
	return done, nil
}
