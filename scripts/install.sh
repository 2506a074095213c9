#!/usr/bin/env bash
# Install credbroker as a systemd service: brokerd and brokerctl, the credbroker.socket and
# credbroker.service units, a `credbroker` system user (brokerd runs as it) and group (clients that
# may connect to the socket), and the master keyset where systemd's LoadCredential= (or, with
# --encrypted, LoadCredentialEncrypted=) hands it to brokerd. Run as root from a checkout.
#
#   scripts/install.sh                      # build, install, new keyset (kept if present), start
#   scripts/install.sh --keyset FILE        # install an existing master keyset instead
#   scripts/install.sh --encrypted          # keep the keyset only as a systemd-creds encrypted
#                                           # credential tied to this machine (TPM2 and/or host key)
#   scripts/install.sh --bin-dir DIR        # install prebuilt brokerd/brokerctl from DIR (no Go needed)
#   scripts/install.sh --no-start           # install and enable, don't start
#
# Idempotent: re-running upgrades binaries and units and never replaces an existing keyset.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
bin_dir=""
keyset_src=""
encrypted=0
start=1

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --keyset) keyset_src=$2; shift 2 ;;
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

unit_dir=/etc/systemd/system
credstore=/etc/credstore                     # plain credentials, root-only (LoadCredential=)
credstore_enc=/etc/credstore.encrypted       # systemd-creds output (LoadCredentialEncrypted=)
plain_keyset=$credstore/credbroker.master-keyset
enc_keyset=$credstore_enc/credbroker.master-keyset
dropin_dir=$unit_dir/credbroker.service.d
have_systemd=0
[[ -d /run/systemd/system ]] && have_systemd=1
if [[ $encrypted -eq 1 && -z "$keyset_src" && ! -e "$plain_keyset" && ! -e "$enc_keyset" ]]; then
  # The encrypted credential only opens on this machine: the operator must hold a backup first.
  echo "install.sh: --encrypted needs --keyset FILE: run \`brokerctl keyset new --out FILE\`, back FILE up offline, then pass it" >&2
  exit 1
fi
if [[ -n "$keyset_src" && ! -f "$keyset_src" ]]; then
  echo "install.sh: --keyset $keyset_src: no such file" >&2
  exit 1
fi

echo "==> binaries -> $prefix/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z "$bin_dir" ]]; then
  go build -trimpath -o "$tmp/" ./cmd/brokerd ./cmd/brokerctl
  bin_dir=$tmp
fi
install -d -m 0755 "$prefix/bin"
install -m 0755 "$bin_dir/brokerd" "$bin_dir/brokerctl" "$prefix/bin/"

echo "==> user and group credbroker"
getent group credbroker >/dev/null || groupadd --system credbroker
getent passwd credbroker >/dev/null ||
  useradd --system --gid credbroker --home-dir /var/lib/credbroker --no-create-home \
    --shell /usr/sbin/nologin --comment "credbroker daemon" credbroker

echo "==> units -> $unit_dir"
for u in credbroker.socket credbroker.service; do
  sed "s#/usr/local/bin/#$prefix/bin/#g" "scripts/systemd/$u" >"$tmp/$u"
  install -m 0644 "$tmp/$u" "$unit_dir/$u"
done
install -d -m 0755 /etc/credbroker
if [[ ! -e /etc/credbroker/brokerd.env ]]; then
  cat >/etc/credbroker/brokerd.env <<'ENV'
# brokerd settings for credbroker.service (read with EnvironmentFile=; restart to apply).
# BROKERD_FLAGS is split at spaces into extra command-line flags, e.g.:
#BROKERD_FLAGS=--admin-gid=1001 --metrics-listen=127.0.0.1:9464
#CREDBROKER_UPSTREAM_URL=https://api.scavio.dev
ENV
  chmod 0644 /etc/credbroker/brokerd.env
fi

echo "==> master keyset"
install -d -m 0700 "$credstore"
if [[ -e "$plain_keyset" || -e "$enc_keyset" ]]; then
  echo "    keeping the existing keyset ($( [[ -e $enc_keyset ]] && echo "$enc_keyset" || echo "$plain_keyset"))"
elif [[ -n "$keyset_src" ]]; then
  install -m 0600 -o root -g root "$keyset_src" "$plain_keyset"
  echo "    installed $keyset_src as $plain_keyset"
else
  "$prefix/bin/brokerctl" keyset new --out "$plain_keyset"
  echo "    NOTE: back up $plain_keyset somewhere safe and offline: without it the stored keys are lost"
fi

if [[ $encrypted -eq 1 && ! -e "$enc_keyset" ]]; then
  command -v systemd-creds >/dev/null || { echo "install.sh: --encrypted needs systemd-creds (systemd 250+)" >&2; exit 1; }
  install -d -m 0700 "$credstore_enc"
  # --with-key=auto: TPM2 plus the host key (/var/lib/systemd/credential.secret) when a TPM2 is
  # present, the host key alone otherwise. Either way the file only decrypts on this machine.
  systemd-creds encrypt --name=master-keyset "$plain_keyset" "$enc_keyset"
  chmod 0600 "$enc_keyset"
  shred -u "$plain_keyset" 2>/dev/null || rm -f "$plain_keyset"
  echo "    encrypted to $enc_keyset; the plaintext copy was removed (keep your offline backup)"
fi
if [[ -e "$enc_keyset" ]]; then
  install -d -m 0755 "$dropin_dir"
  cat >"$dropin_dir/10-encrypted-keyset.conf" <<DROPIN
# Written by scripts/install.sh --encrypted: the master keyset is a systemd-creds credential.
[Service]
LoadCredential=
LoadCredentialEncrypted=master-keyset:$enc_keyset
DROPIN
  chmod 0644 "$dropin_dir/10-encrypted-keyset.conf"
fi

if [[ $have_systemd -eq 0 ]]; then
  echo "==> systemd is not running here: units installed but not enabled"
  exit 0
fi
echo "==> systemctl daemon-reload, enable credbroker.socket credbroker.service"
systemctl daemon-reload
systemctl enable credbroker.socket credbroker.service
if [[ $start -eq 1 ]]; then
  systemctl restart credbroker.socket
  systemctl restart credbroker.service
  "$prefix/bin/brokerctl" --socket /run/credbroker/broker.sock health
fi
cat <<EOF
==> done
    status:   systemctl status credbroker; journalctl -u credbroker
    clients:  usermod -aG credbroker USER   (then CREDBROKER_SOCKET=/run/credbroker/broker.sock)
    operate:  sudo brokerctl --socket /run/credbroker/broker.sock credential put scavio_api_key
EOF
