#!/usr/bin/env bash
# Soak (not in CI): mixed traffic against the real brokerd for 10 minutes (searches with unlimited
# and use-limited tokens, mint/revoke/list/status, a rotation of the upstream key every 30 s, and
# connection churn: SOAK_CHURNERS clients opening a connection, making a call with a token and one
# without, and closing it, over and over),
# printing brokerd's RSS, heap, goroutines, threads, fds and db size every 30 s and a verdict on
# whether they stay flat. CI runs the same test for 16 s.
#
#   scripts/soak.sh                                  # 10m, sample and rotate every 30s, 32 workers
#   SOAK_DURATION=1h SOAK_EVERY=1m scripts/soak.sh
#   SOAK_DURATION=20s SOAK_EVERY=5s scripts/soak.sh   # a quick look
#   SOAK_WITH_LOAD=1 scripts/soak.sh                 # first: 1,000 clients for 30 s, then 270 s
#                                                    # idle (two of Go's 2-minute forced GCs), and
#                                                    # the heap must come back near baseline
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${SOAK_DURATION:-10m}
every=${SOAK_EVERY:-30s}
workers=${SOAK_WORKERS:-32}
churners=${SOAK_CHURNERS:-4}

run() {
  local name=$1; shift
  local out rc
  out=$(mktemp)
  set +e
  go test -count=1 -timeout 0 -run "^${name}\$" -v ./cmd/brokerd -args "$@" 2>&1 | tee "$out" | grep --line-buffered -E 'SOAK|LOAD|^--- |^(ok|FAIL)'
  rc=${PIPESTATUS[0]}
  set -e
  if (( rc != 0 )); then
    echo "$name failed; full output:" >&2
    cat "$out" >&2
  fi
  rm -f "$out"
  return "$rc"
}

rc=0
if [[ -n "${SOAK_WITH_LOAD:-}" ]]; then
  echo "==> load: 1,000 clients for 30s, then 270s idle"
  run TestLoad1000Clients -load.duration=30s -load.settle=270s || rc=$?
fi
echo "==> soak: $duration, rotate and sample every $every, $workers searching clients, $churners churning connections"
run TestSoak -soak.duration="$duration" -soak.every="$every" -soak.workers="$workers" -soak.churners="$churners" || rc=$?
exit "$rc"
