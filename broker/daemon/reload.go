package daemon

import (
	"errors"
	"strings"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/credbroker/credbroker/broker/metrics"
	"github.com/credbroker/credbroker/store"
)

// reload re-reads the master keyset file (SIGHUP, `systemctl reload`). A keyset that decrypts
// the database's wrapped keysets is accepted and they are re-wrapped under its primary key, so a
// rotated KEK (old key + new primary, `brokerctl keyset rotate`) takes effect without a restart. Any
// other keyset is rejected and nothing changes: the data keyset brokerd holds stays in use and the
// database stays wrapped as before. Flags are not re-read; changing them needs a restart.
func (s *supervisor) reload() {
	s.send(sddaemon.SdNotifyReloading, strings.TrimSpace(sddaemon.SdNotifyMonotonicUsec()), "STATUS=reloading the master keyset")
	defer func() { s.send(sddaemon.SdNotifyReady, s.statusLine()) }()

	s.log.Info("SIGHUP: reloading the master keyset", "path", s.keysetPath)
	rewrapped, err := s.reloadKeyset()
	if err != nil {
		metrics.KeysetReloads.WithLabelValues("rejected").Inc()
		hint := "fix the file and send SIGHUP again"
		if errors.Is(err, store.ErrWrongMasterKey) {
			hint = "a new master keyset must contain the current key (make one with `brokerctl keyset rotate`); restore the previous file, or brokerd will refuse to start next time"
		}
		s.log.Error("master keyset reload rejected; still using the keyset loaded earlier", "path", s.keysetPath, "err", err, "hint", hint)
		return
	}
	metrics.KeysetReloads.WithLabelValues("accepted").Inc()
	if rewrapped {
		s.log.Info("master keyset reloaded; the database's keysets are now wrapped under its primary key", "path", s.keysetPath)
	} else {
		s.log.Info("master keyset reloaded; its primary key already wraps the database's keysets", "path", s.keysetPath)
	}
}

// reloadKeyset loads the keyset file, proves it opens the database (every wrapped keyset
// decrypts) and re-wraps under its primary if that is a new key. The store then also uses it for
// later data-key rotations.
func (s *supervisor) reloadKeyset() (rewrapped bool, err error) {
	kek, err := store.LoadMasterKeyset(s.keysetPath)
	if err != nil {
		return false, err
	}
	u, err := s.st.Keys()
	if err != nil {
		return false, err
	}
	if !u.OpensWith(kek) {
		return false, store.ErrWrongMasterKey
	}
	_, rewrapped, err = s.st.RewrapIfNeeded(kek)
	return rewrapped, err
}
