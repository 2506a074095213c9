#!/usr/bin/env bash
# The test command: vet, race-enabled unit and integration tests (real brokerd processes against
# the fake upstream), and short fuzz runs. .ci/run calls this; so can you.
set -euo pipefail
cd "$(dirname "$0")/.."

# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can report a spurious
# "context deadline exceeded" failure at the deadline (golang/go#75804, fixed in Go 1.27) — it
# failed CI once, with no failing input written. 60000 executions is 1-10 s per target here.
fuzztime=${FUZZTIME:-60000x}
# Each input that widens coverage (and a crasher) is minimized first, for up to 60 s by default,
# the run showing 0 execs/s meanwhile: FuzzKeyForms spent a whole minute so in one CI run, and ten
# such inputs in a run would reach go test's 10-minute timeout. A count again, not a duration. The
# cost is less minimal corpus entries; a crasher is still written, only less reduced.
minimize=${FUZZMINIMIZE:-1000x}

echo "==> go vet"
go vet ./...

echo "==> gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))
if [[ -n "$unformatted" ]]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

echo "==> go test -race ./..."
go test -race -count=1 ./...

echo "==> short fuzz runs ($fuzztime each)"
# One target per invocation: go test -fuzz accepts a single target.
while read -r pkg target; do
  go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" -fuzzminimizetime="$minimize" "$pkg"
done <<'TARGETS'
./broker/token FuzzParse
./store FuzzDecodeToken
./store FuzzDecodeAuditRecord
./store FuzzAuditEncoderMatchesJSON
./broker FuzzSearchRequest
./broker FuzzTranscodeAnswer
./broker/upstream FuzzRedactJSON
./broker/upstream FuzzKeyForms
TARGETS
