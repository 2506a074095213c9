// Package attest identifies a calling process by what the kernel says about it (uid, gid and
// supplementary groups, executable and its sha256, systemd unit) and finds the workload
// registration whose selectors all match it, the way SPIRE's unix workload attestor turns a pid
// into selectors. It knows nothing of gRPC or tokens: broker asks it "who is this, and which
// registration is theirs?", and it answers with a registration or an error naming what did not
// match.
//
// It never trusts a bare pid: a process is pinned by a pidfd checked against the start time the
// connection's own pidfd vouched for (Pin), and every read of /proc is followed by a check that
// the pidfd's process has not been reaped, so nothing read belongs to a process that reused the pid.
package attest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/credbroker/credbroker/store"
)

// ErrNoMatch reports a caller no registration admits, or one that two registrations with
// different scopes admit (ambiguity is refused, not guessed). Its message names what did not
// match so an operator can fix the registration.
var ErrNoMatch = errors.New("no workload registration matches this process")

// ErrUnidentified reports a caller brokerd cannot identify well enough to attest: no pidfd
// (Linux older than 6.5), or the process exited.
var ErrUnidentified = errors.New("cannot attest the calling process")

// Process is what attestation learned about a caller. Exe and ExeSHA256 are empty when brokerd
// may not read them (another uid, without CAP_SYS_PTRACE); Unit is empty outside a systemd unit.
type Process struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups (/proc/PID/status Groups:)
	Exe    string
	// ExeSHA256 is computed on demand (Digest): only registrations with a digest need it.
	ExeSHA256 string
	Unit      string
	// UnitUnreadable: brokerd could not read the process's cgroup (another user's process under
	// ProtectProc=invisible), so an empty Unit says nothing about it.
	UnitUnreadable bool
	// digest computes ExeSHA256; nil in tests that set it directly.
	digest func() (string, error)
}

// Digest returns the sha256 of the process's executable, computing it once.
func (p *Process) Digest() (string, error) {
	if p.ExeSHA256 != "" || p.digest == nil {
		if p.ExeSHA256 == "" {
			return "", errors.New("executable unreadable by brokerd")
		}
		return p.ExeSHA256, nil
	}
	d, err := p.digest()
	if err != nil {
		return "", err
	}
	p.ExeSHA256 = d
	return d, nil
}

// Program names the process for the audit and for refusals.
func (p *Process) Program() string {
	if p.Exe != "" {
		return p.Exe
	}
	return fmt.Sprintf("pid %d (executable unreadable by brokerd)", p.PID)
}

// mismatches lists the selectors of w that p does not satisfy, in words naming p's own value
// (never the registration's: a caller learns what it is, not what would be admitted), and
// whether p asked for a tool w does not grant.
func mismatches(w *store.Workload, p *Process, tools []string) []string {
	var out []string
	if len(w.UIDs) > 0 && !slices.Contains(w.UIDs, p.UID) {
		out = append(out, fmt.Sprintf("uid %d", p.UID))
	}
	if len(w.GIDs) > 0 && !slices.Contains(w.GIDs, p.GID) && !slices.ContainsFunc(p.Groups, func(g uint32) bool { return slices.Contains(w.GIDs, g) }) {
		out = append(out, fmt.Sprintf("gid %d and groups %v", p.GID, p.Groups))
	}
	if w.Exe != "" && p.Exe != w.Exe {
		if p.Exe == "" {
			out = append(out, "exe path (unreadable by brokerd)")
		} else {
			out = append(out, fmt.Sprintf("exe path %s", p.Exe))
		}
	}
	if w.Unit != "" && p.Unit != w.Unit {
		switch {
		case p.UnitUnreadable:
			out = append(out, "unit (unreadable by brokerd)")
		case p.Unit == "":
			out = append(out, "unit (not in a systemd unit)")
		default:
			out = append(out, fmt.Sprintf("unit %s", p.Unit))
		}
	}
	// The digest is the one selector that costs: brokerd reads the whole file the caller runs,
	// which the caller chose (any size, a sparse file of terabytes) and needs no token to offer.
	// Only a caller every other selector admits is hashed.
	if w.ExeSHA256 != "" && len(out) == 0 {
		if d, err := p.Digest(); err != nil {
			out = append(out, fmt.Sprintf("exe digest (%v)", err))
		} else if d != w.ExeSHA256 {
			out = append(out, fmt.Sprintf("exe digest sha256:%s", d))
		}
	}
	for _, t := range tools {
		if !slices.Contains(w.Tools, t) {
			out = append(out, fmt.Sprintf("tool %s not granted", t))
			break
		}
	}
	return out
}

// sameScope reports whether a and b would mint the same kind of token: then either may answer.
func sameScope(a, b *store.Workload) bool {
	return slices.Equal(a.Tools, b.Tools) && a.TTL == b.TTL && a.MaxUses == b.MaxUses &&
		a.BudgetCredits == b.BudgetCredits && a.BudgetPeriod == b.BudgetPeriod &&
		a.RateLimit == b.RateLimit && a.RatePeriod == b.RatePeriod && a.Label == b.Label
}

// maxNamed bounds how many registrations a refusal describes.
const maxNamed = 4

// Match returns the registration among regs (sorted by name) whose selectors all match p and
// which grants every tool in tools. None, or two with different scopes, is ErrNoMatch with a
// message naming, per registration, what of p did not match.
func Match(regs []store.Workload, p *Process, tools []string) (store.Workload, error) {
	var (
		matched []*store.Workload
		why     []string
	)
	for i := range regs {
		w := &regs[i]
		if m := mismatches(w, p, tools); len(m) > 0 {
			if len(why) < maxNamed {
				why = append(why, fmt.Sprintf("%s: %s does not match", w.Name, strings.Join(m, ", ")))
			}
			continue
		}
		matched = append(matched, w)
	}
	switch {
	case len(matched) == 0 && len(regs) == 0:
		return store.Workload{}, fmt.Errorf("%w: none are registered (an operator adds one with `brokerctl workload add`)", ErrNoMatch)
	case len(matched) == 0:
		more := ""
		if n := len(regs) - len(why); n > 0 {
			more = fmt.Sprintf(" (and %d more)", n)
		}
		return store.Workload{}, fmt.Errorf("%w (uid %d, %s): %s%s", ErrNoMatch, p.UID, p.Program(), strings.Join(why, "; "), more)
	}
	for _, w := range matched[1:] {
		if !sameScope(matched[0], w) {
			return store.Workload{}, fmt.Errorf("%w: registrations %s and %s both match (uid %d, %s) with different scopes; brokerd does not guess: an operator must narrow one",
				ErrNoMatch, matched[0].Name, w.Name, p.UID, p.Program())
		}
	}
	return *matched[0], nil
}

// FileSHA256 returns the sha256 of the file at path, hex (for `workload add --pin-exe`).
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return readerSHA256(f)
}

// readerSHA256 is the hex sha256 of everything r holds: the one digest an --exe-sha256 selector,
// --pin-exe and the executable cache all compare.
func readerSHA256(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
