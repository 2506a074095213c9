#!/usr/bin/env bash
# Install credbroker as a systemd service: brokerd and brokerctl, the credbroker.socket and
# credbroker.service units, a `credbroker` system user (brokerd runs as it) and group (clients that
# may connect to the socket), and the master keyset where systemd's LoadCredential= (or, with
# --encrypted, LoadCredentialEncrypted=) hands it to brokerd. Run as root from a checkout.
# Idempotent: re-running upgrades binaries and units and never replaces an existing keyset.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'USAGE'
Usage: scripts/install.sh [options]     (as root, from a checkout)

Installs brokerd and brokerctl, the credbroker.socket and credbroker.service units, the
credbroker user and group, and the master keyset; then enables and starts the service.
Re-running upgrades binaries and units and never replaces or loses an existing keyset.

Options:
  --prefix DIR     install the binaries into DIR/bin (default /usr/local); the units point there
  --bin-dir DIR    install prebuilt brokerd and brokerctl from DIR instead of building (no Go needed)
  --keyset FILE    install this master keyset (e.g. your backed-up one) instead of making a new one
  --encrypted      keep the keyset only as a systemd-creds credential that decrypts on this machine
                   (TPM2 and/or host key). A new install needs --keyset FILE (your offline backup).
                   Over an existing plain install, the encrypted copy is decrypted and compared
                   first, and the plaintext is moved to a root-only backup (path printed), not shredded
  --no-start       install and enable, but do not start
  --destdir DIR    install under DIR as if it were / (packaging, tests): no user, no systemctl
  -h, --help       show this help

Examples:
  sudo scripts/install.sh
  sudo scripts/install.sh --encrypted --keyset /path/to/backed-up-master-keyset.json
USAGE
}

prefix=/usr/local
bin_dir=""
keyset_src=""
encrypted=0
start=1
destdir=""

need_arg() { [[ $# -ge 2 && -n "$2" ]] || { echo "install.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
    --bin-dir) need_arg "$@"; bin_dir=$2; shift 2 ;;
    --keyset) need_arg "$@"; keyset_src=$2; shift 2 ;;
    --destdir) need_arg "$@"; destdir=${2%/}; shift 2 ;;
    --encrypted) encrypted=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root (it creates a system user and installs into /etc and $prefix)" >&2
  exit 1
fi

# $destdir (empty normally) prefixes every path written; what the units name stays the real path.
unit_dir=$destdir/etc/systemd/system
etc_dir=$destdir/etc/credbroker
credstore=$destdir/etc/credstore                     # plain credentials, root-only (LoadCredential=)
credstore_enc_path=/etc/credstore.encrypted          # systemd-creds output (LoadCredentialEncrypted=)
credstore_enc=$destdir$credstore_enc_path
plain_keyset=$credstore/credbroker.master-keyset
enc_keyset=$credstore_enc/credbroker.master-keyset
backup_dir=$destdir/var/backups/credbroker           # root-only copies of a keyset before --encrypted removes it
dropin_dir=$unit_dir/credbroker.service.d
bin_dest=$destdir$prefix/bin
have_systemd=0
[[ -z "$destdir" && -d /run/systemd/system ]] && have_systemd=1
if [[ $encrypted -eq 1 && -z "$keyset_src" && ! -e "$plain_keyset" && ! -e "$enc_keyset" ]]; then
  # The encrypted credential only opens on this machine: the operator must hold a backup first.
  echo "install.sh: --encrypted needs --keyset FILE: run \`brokerctl keyset new --out FILE\`, back FILE up offline, then pass it" >&2
  exit 1
fi
if [[ -n "$keyset_src" && ! -f "$keyset_src" ]]; then
  echo "install.sh: --keyset $keyset_src: no such file" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z "$bin_dir" ]]; then
  command -v go >/dev/null || { echo "install.sh: building needs Go 1.26 on PATH (or pass --bin-dir DIR with prebuilt binaries)" >&2; exit 1; }
  echo "==> building with $(go version | cut -d' ' -f3) (the first build downloads modules: a minute or two)"
  for b in brokerd brokerctl; do
    started=$SECONDS
    echo "    building $b ..."
    # In the background, with a line every 15s, so a cold build (about two minutes) is not silent.
    go build -trimpath -o "$tmp/" "./cmd/$b" &
    pid=$!
    next=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      if ((SECONDS >= next)) && kill -0 "$pid" 2>/dev/null; then
        echo "    ... still building $b ($((SECONDS - started))s so far)"
        next=$((SECONDS + 15))
      fi
    done
    wait "$pid" || { echo "install.sh: go build ./cmd/$b failed (see above)" >&2; exit 1; }
    echo "    built $b in $((SECONDS - started))s"
  done
  bin_dir=$tmp
fi
for b in brokerd brokerctl; do
  [[ -x "$bin_dir/$b" ]] || { echo "install.sh: --bin-dir $bin_dir has no executable $b" >&2; exit 1; }
done
echo "==> binaries -> $bin_dest"
install -d -m 0755 "$bin_dest"
install -m 0755 "$bin_dir/brokerd" "$bin_dir/brokerctl" "$bin_dest/"

if [[ -n "$destdir" ]]; then
  echo "==> user and group credbroker: not created with --destdir (the target system needs them)"
else
  echo "==> user and group credbroker"
  getent group credbroker >/dev/null || groupadd --system credbroker
  getent passwd credbroker >/dev/null ||
    useradd --system --gid credbroker --home-dir /var/lib/credbroker --no-create-home \
      --shell /usr/sbin/nologin --comment "credbroker daemon" credbroker
fi

echo "==> units -> $unit_dir"
install -d -m 0755 "$unit_dir"
for u in credbroker.socket credbroker.service; do
  sed "s#/usr/local/bin/#$prefix/bin/#g" "scripts/systemd/$u" >"$tmp/$u"
  install -m 0644 "$tmp/$u" "$unit_dir/$u"
done
install -d -m 0755 "$etc_dir"
if [[ ! -e "$etc_dir/brokerd.env" ]]; then
  cat >"$etc_dir/brokerd.env" <<'ENV'
# brokerd settings for credbroker.service (read with EnvironmentFile=; restart to apply).
# BROKERD_FLAGS is split at spaces into extra command-line flags, e.g.:
#BROKERD_FLAGS=--admin-gid=1001 --metrics-listen=127.0.0.1:9464
#CREDBROKER_UPSTREAM_URL=https://api.scavio.dev
ENV
  chmod 0644 "$etc_dir/brokerd.env"
fi

echo "==> master keyset"
install -d -m 0700 "$credstore"
if [[ -e "$plain_keyset" || -e "$enc_keyset" ]]; then
  echo "    keeping the existing keyset ($( [[ -e $enc_keyset ]] && echo "$enc_keyset" || echo "$plain_keyset"))"
elif [[ -n "$keyset_src" ]]; then
  install -m 0600 -o root -g root "$keyset_src" "$plain_keyset"
  echo "    installed $keyset_src as $plain_keyset"
else
  "$bin_dest/brokerctl" keyset new --out "$plain_keyset"
  echo "    NOTE: back up $plain_keyset somewhere safe and offline: without it the stored keys are lost"
fi

if [[ $encrypted -eq 1 && ! -e "$enc_keyset" ]]; then
  command -v systemd-creds >/dev/null || { echo "install.sh: --encrypted needs systemd-creds (systemd 250+); the plain keyset $plain_keyset was kept" >&2; exit 1; }
  install -d -m 0700 "$credstore_enc"
  # The plaintext may be the only copy of the key that opens the database: it is removed only
  # after the encrypted file is proven to decrypt to the same bytes, and after a root-only backup
  # exists. Until then nothing is moved, and a failure leaves the plain install as it was.
  new_enc="$enc_keyset.new"
  rm -f "$new_enc"
  # --with-key=auto: TPM2 plus the host key (/var/lib/systemd/credential.secret) when a TPM2 is
  # present, the host key alone otherwise. Either way the file only decrypts on this machine.
  if ! systemd-creds encrypt --name=master-keyset "$plain_keyset" "$new_enc"; then
    rm -f "$new_enc"
    echo "install.sh: systemd-creds encrypt failed; the plain keyset $plain_keyset was kept and is still used" >&2
    exit 1
  fi
  chmod 0600 "$new_enc"
  if ! systemd-creds decrypt --name=master-keyset "$new_enc" - >"$tmp/check" || ! cmp -s "$tmp/check" "$plain_keyset"; then
    rm -f "$new_enc" "$tmp/check"
    echo "install.sh: the encrypted keyset did not decrypt to the same keyset; nothing was changed, the plain keyset $plain_keyset is still used" >&2
    exit 1
  fi
  rm -f "$tmp/check"
  install -d -m 0700 -o root -g root "$backup_dir"
  backup="$backup_dir/master-keyset.$(date -u +%Y%m%dT%H%M%SZ).json"
  install -m 0600 -o root -g root "$plain_keyset" "$backup"
  cmp -s "$backup" "$plain_keyset" || { rm -f "$new_enc"; echo "install.sh: could not back up $plain_keyset to $backup; nothing was changed" >&2; exit 1; }
  mv "$new_enc" "$enc_keyset"
  rm -f "$plain_keyset"
  echo "    encrypted to $enc_keyset (verified: it decrypts to the same keyset)"
  echo "    the plaintext keyset was moved to $backup (root-only, 0600):"
  echo "    copy it somewhere safe and offline, then delete it; the encrypted file opens only on this machine"
elif [[ $encrypted -eq 1 && -e "$plain_keyset" ]]; then
  echo "    NOTE: $enc_keyset exists and is used; the plain $plain_keyset is also still there (back it up offline, then delete it)"
fi
if [[ -e "$enc_keyset" ]]; then
  install -d -m 0755 "$dropin_dir"
  cat >"$dropin_dir/10-encrypted-keyset.conf" <<DROPIN
# Written by scripts/install.sh --encrypted: the master keyset is a systemd-creds credential.
[Service]
LoadCredential=
LoadCredentialEncrypted=master-keyset:$credstore_enc_path/credbroker.master-keyset
DROPIN
  chmod 0644 "$dropin_dir/10-encrypted-keyset.conf"
fi

if [[ $have_systemd -eq 0 ]]; then
  if [[ -n "$destdir" ]]; then
    echo "==> installed under $destdir: units not enabled"
  else
    echo "==> systemd is not running here: units installed but not enabled"
  fi
  exit 0
fi
echo "==> systemctl daemon-reload, enable credbroker.socket credbroker.service"
systemctl daemon-reload
systemctl enable credbroker.socket credbroker.service
if [[ $start -eq 1 ]]; then
  systemctl restart credbroker.socket
  systemctl restart credbroker.service
  "$bin_dest/brokerctl" --socket /run/credbroker/broker.sock health
fi
cat <<EOF
==> done
    status:   systemctl status credbroker; journalctl -u credbroker
    clients:  usermod -aG credbroker USER   (then CREDBROKER_SOCKET=/run/credbroker/broker.sock)
    operate:  sudo brokerctl --socket /run/credbroker/broker.sock credential put scavio_api_key
EOF
