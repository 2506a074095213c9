#!/usr/bin/env bash
# Crash consistency, long version: the real brokerd is SIGKILLed at random moments under concurrent
# writes (put, rotate, mint, revoke, use-counted searches, master keyset rotation + SIGHUP), at
# least 50 times; after every kill the file is checked offline (bbolt tx.Check read-only, the
# store's Check and audit chain, every acknowledged write) and brokerd is restarted and searched.
# CI runs the same test with 10 kills.
#
#   scripts/crash.sh            # 50 kills
#   CRASH_KILLS=200 scripts/crash.sh
set -euo pipefail
cd "$(dirname "$0")/.."

kills=${CRASH_KILLS:-50}
if (( kills < 1 )); then
  echo "CRASH_KILLS must be positive" >&2
  exit 2
fi
echo "==> crash consistency: $kills SIGKILLs"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
CRASH_KILLS=$kills go test -count=1 -timeout 60m -run '^(TestCrashConsistency|TestCrashCheckDetectsLoss)$' -v ./cmd/brokerd >"$out" 2>&1
rc=$?
set -e
grep -E '^(--- |ok|FAIL|PASS)|CRASH RESULT' "$out" || true
if (( rc != 0 )); then
  echo "crash test failed; full output:" >&2
  cat "$out" >&2
fi
exit "$rc"
