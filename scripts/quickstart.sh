#!/usr/bin/env bash
# The tutorial's flow, split across processes: brokerd holds the key, brokerctl stores it and mints
# a scoped token, and a search goes through the broker with the token only.
#
# Against the real Scavio API when SCAVIO_API_KEY is set, else against the fake upstream
# (cmd/fakescavio) on loopback. Everything lives in a temp dir that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/credbroker-quickstart.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building brokerd, brokerctl, fakescavio into $work/bin"
go build -o "$work/bin/" ./cmd/brokerd ./cmd/brokerctl ./cmd/fakescavio
export PATH="$work/bin:$PATH"
export CREDBROKER_SOCKET="$work/run/broker.sock"

echo "==> new master keyset (mode 0600)"
brokerctl keyset new --out "$work/master-keyset.json"

if [[ -n "${SCAVIO_API_KEY:-}" ]]; then
  upstream=https://api.scavio.dev
  key_file=/dev/null
  echo "==> using the real Scavio API ($upstream)"
else
  # A random test key, written to a 0600 file: secrets never travel on argv.
  (umask 077; printf 'sk_test_%s\n' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" > "$work/fake-key")
  key_file="$work/fake-key"
  fakescavio --keys-file "$key_file" > "$work/fake.out" 2> "$work/fake.log" &
  pids+=($!)
  for _ in $(seq 100); do
    upstream=$(sed -n 's/^listening on //p' "$work/fake.out" | head -n1)
    [[ -n "$upstream" ]] && break
    sleep 0.05
  done
  [[ -n "$upstream" ]] || { echo "fakescavio did not start:"; cat "$work/fake.log"; exit 1; }
  echo "==> SCAVIO_API_KEY not set: using the fake Scavio upstream at $upstream"
fi

echo "==> starting brokerd"
brokerd --db "$work/broker.db" --master-keyset "$work/master-keyset.json" --upstream-url "$upstream" \
  2> "$work/brokerd.log" &
pids+=($!)
for _ in $(seq 200); do
  brokerctl status > /dev/null 2>&1 && break
  sleep 0.05
done
brokerctl status > /dev/null || { echo "brokerd did not start:"; cat "$work/brokerd.log"; exit 1; }

echo "==> storing the API key as scavio_api_key (read from stdin, encrypted at rest)"
if [[ -n "${SCAVIO_API_KEY:-}" ]]; then
  printf '%s\n' "$SCAVIO_API_KEY" | brokerctl credential put scavio_api_key
else
  brokerctl credential put scavio_api_key --from-file "$key_file"
fi

echo "==> minting a token scoped to web_search for 30 minutes"
CREDBROKER_TOKEN=$(brokerctl token mint --tools web_search --ttl 30m --label quickstart)
export CREDBROKER_TOKEN
brokerctl token list

echo "==> searching through the broker with the token only"
brokerctl search "MCP server security best practices 2026"
