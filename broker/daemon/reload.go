package daemon

import (
	"context"
	"errors"
	"strings"
	"time"

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
	s.send(sddaemon.SdNotifyReloading, strings.TrimSpace(sddaemon.SdNotifyMonotonicUsec()), "STATUS=reloading the master key")
	defer func() { s.send(sddaemon.SdNotifyReady, s.statusLine()) }()

	src := s.mk.MasterKeyInfo().Source
	s.log.Info("SIGHUP: reloading the master key", "kek", src)
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	rewrapped, err := s.mk.reload(ctx)
	if err != nil {
		metrics.KeysetReloads.WithLabelValues("rejected").Inc()
		hint := "fix the file and send SIGHUP again"
		switch {
		case s.mk.MasterKeyInfo().KMS:
			// First: a KMS that refuses to decrypt (a token without decrypt) also reports
			// ErrWrongMasterKey, and the keyset-file advice below would be wrong for it.
			hint = "the KMS is needed for a reload and a re-wrap only: brokerd keeps serving; fix the KMS or its token (it must be allowed to decrypt with the key) and send SIGHUP again"
		case errors.Is(err, store.ErrWrongMasterKey):
			hint = "a new master keyset must contain the current key (make one with `brokerctl keyset rotate`); restore the previous file, or brokerd will refuse to start next time"
		}
		msg := "master keyset reload rejected; still using the keyset loaded earlier"
		if s.mk.MasterKeyInfo().KMS {
			msg = "master key reload rejected; still using the KMS client opened earlier"
		}
		s.log.Error(msg, "kek", src, "err", err, "hint", hint)
		return
	}
	metrics.KeysetReloads.WithLabelValues("accepted").Inc()
	kms := s.mk.MasterKeyInfo().KMS
	switch {
	case kms && rewrapped:
		s.log.Info("master key reloaded; the database's keysets are now wrapped under its current key", "kek", src)
	case kms:
		s.log.Info("master key reloaded; its current key already wraps the database's keysets", "kek", src)
	case rewrapped: // the keyset file's messages, as before KMS support (operators grep them)
		s.log.Info("master keyset reloaded; the database's keysets are now wrapped under its primary key", "kek", src)
	default:
		s.log.Info("master keyset reloaded; its primary key already wraps the database's keysets", "kek", src)
	}
}

// reloadTimeout bounds a reload's KMS calls, so a hung KMS cannot hold the next SIGHUP forever.
const reloadTimeout = 2 * time.Minute
