#!/usr/bin/env bash
# scripts/flaky.sh — does any timing-sensitive test flip? Run it before you stop when you touched
# timing (timeouts, deadlines, retries, sleeps, clocks, shutdown). Not a CI step: it takes
# ~30 minutes on a 2-core machine.
#
#   1. every test that sleeps, races a deadline or expects a timing, -count=30 (the long stress
#      tests -count=5: each is already hundreds of iterations of the same thing);
#   2. the same tests with -race, -count=3, while a CPU hog (`yes >/dev/null`) keeps one core busy
#      — what CI looks like when other work runs beside it.
#
# Usage: scripts/flaky.sh [REGEX]   only the tests whose "pkg Test" line matches REGEX
# Env:   COUNT=N overrides phase 1's count for every test; HOG_COUNT=N phase 2's (default 3);
#        PHASES="1 2" which phases to run.
# Exit status: 0 if nothing flipped; 1 with the failing tests' logs in $FLAKY_LOGS (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

filter=${1:-.}
phases=${PHASES:-1 2}
hog_count=${HOG_COUNT:-3}
logs=${FLAKY_LOGS:-$(mktemp -d /tmp/flaky.XXXXXX)}
mkdir -p "$logs"

# package  test-regex  phase-1 count. Keep this list current: a new test that waits on a clock,
# a deadline or a retry belongs here.
tests=$(cat <<'LIST'
./broker                     TestRunSchedulerUsesTheClock|TestSchedulerFailuresBackOff|TestScheduledRotateAtShutdownIsAudited|TestRotateCommandOutput|TestSharedSearchRefusedForTheStartersDeadlineOnly  30
./broker/daemon              TestLiveSocketWithFullBacklogIsNotReplaced|TestStopAbandonsAHandlerThatNeverReturns|TestWatchdogCheckFailsWhileAuditWriterIsStuck  30
./broker/grpcapi             TestUpstreamFaults|TestRateLimitStormProbesAlone  30
./broker/grpcapi             TestCredentialRateLimitSharedByAllTokens|TestTokenRevokedOrExpiredWhileWaitingForASlot|TestTokenRevokedOrExpiredWhileTheUpstreamCallWaits|TestLimiterLearnsFromUpstream|TestHealthShutdownEndsWatchers|TestUndecodableRequestIsAudited|TestCacheSingleFlight|TestTokenBudgetAndCredentialCeiling|TestGraceFallback  30
./broker/grpcapi             TestZeroDowntimeRotation|TestCacheSavingsWorkload  5
./broker/grpcapi             TestIdleConnectionIsClosed|TestHeaderListSizeIsBounded|TestRefusalsWithoutTokenAreCoalesced  30
./broker/connlimit           .*  30
./broker/limiter             .*  30
./broker/resultcache         .*  30
./broker/upstream            TestAttemptTimeoutRetried|TestContextEnds|TestRetryAfter|TestPanicInProbeReleasesGate|TestResumeAsked  30
./broker/upstream/scaviotest TestFault  30
./client                     .*  30
./cmd/fakescavio             TestRunServesReloadsAndStops  30
./cmd/scavio-mcp             TestCancelReachesBroker|TestRefusedTokenAsksForANewOne|TestUpstreamFaults  30
./cmd/brokerd                TestSIGTERMDrainsInFlightCall|TestShutdownTimeoutEndsCallsCleanly|TestShutdownBoundedByOneTimeout|TestFailedFsyncNeverContradictsTheDatabase|TestDiskFull|TestDiskFullKillRestart|TestSocketActivation|TestSystemdNotify|TestSystemdNoWatchdogWithoutUsec|TestStartupRefusals|TestMasterKeyRotationEndToEnd|TestKill9AndRestart|TestSIGHUPDuringStartup|TestSIGTERMDuringStartup|TestSIGTERMDuringReloadWithHungKMS|TestWatchdogPingsDuringAHungReload|TestNoChownWithoutSocketGroup  30
./cmd/brokerd                TestBigBodyStormRSS|TestRekeyKill9EndToEnd|TestCrashConsistency|TestLoad1000Clients|TestSoak  5
./cmd/brokerd                TestConnectionCapKeepsAdminsIn|TestTokenlessFloodIsCoalescedAcrossShutdown  30
./cmd/brokerd                TestPythonClientFullAcceptQueue|TestTypeScriptClientFullAcceptQueue  10
./cmd/brokerd                TestWorkloadAttestation|TestExecRevokesOnExit|TestClientRenewsAsAnotherUID|TestHTTPFrontProcess|TestHTTPFrontTCPKnowsTheCallersUID|TestBrokerctlRefusesSquattedSocket|TestAdminGIDMatchesSupplementaryGroups  10
./cmd/scavio-mcp             TestNoTokenRenewsAcrossTTLs|TestBinaryNoToken|TestTypeScriptSDKNoToken  10
./broker/httpfront           .*  10
./broker/attest              .*  30
./broker/grpcapi             TestRefusalsCarryErrorInfo  30
./broker/grpcapi             TestFetchTokenRateLimitedPerUID|TestFetchTokenPastTheWatchLimitIsCoalesced|TestFetchTokenOneUIDCannotTakeEveryWatch|TestAdminRevokeEndsTheWatch  30
./broker                     TestProcessExitRevokeIsRetried|TestRestartRevokeCommitsWithItsRecord  30
./store                      TestAuditCommittedSignal|TestAuditPruneInBatchesBetweenCommits  30
./store                      TestAppendAuditRacingClose|TestKeysDuringRewrap|TestSecondOpenFailsFast|TestPutTokenAudited|TestIntegrityCheckAcrossChunks  30
./store                      TestJournalCheckpointInterval|TestJournalReadersInCheckpointWindow|TestJournalFullCheckpoints|TestJournalWriteFailure  30
./store                      TestJournalReadersDuringCheckpointsStress  5
./store                      TestJournalRecordsSurviveRestartOnFullDisk|TestSecretFileFIFORefused  30
./broker/grpcapi             TestHandlerPanicFailsOnlyItsCall|TestRecoverInterceptors  30
LIST
)

failed=0
run() { # phase pkg regex count [-race]
  local phase=$1 pkg=$2 re=$3 count=$4 race=${5:-}
  local log="$logs/phase$phase-$(echo "$pkg-$re" | tr -c 'A-Za-z0-9\n' '_' | cut -c1-120).log"
  local start=$SECONDS
  if go test $race -count="$count" -run "^($re)\$" "$pkg" >"$log" 2>&1; then
    printf '  ok    %-28s %s  (x%s, %ss)\n' "$pkg" "$re" "$count" $((SECONDS - start))
  else
    printf '  FLIP  %-28s %s  (x%s): see %s\n' "$pkg" "$re" "$count" "$log"
    grep -E -- '^\s*--- FAIL|panic:' "$log" | sort | uniq -c | head -20 || true
    failed=1
  fi
}

for phase in $phases; do
  case $phase in
  1)
    echo "==> phase 1: each timing test many times over"
    while read -r pkg re count; do
      [[ -z "$pkg" ]] && continue
      grep -Eq -- "$filter" <<<"$pkg $re" || continue
      run 1 "$pkg" "$re" "${COUNT:-$count}"
    done <<<"$tests"
    ;;
  2)
    echo "==> phase 2: -race -count=$hog_count with one core kept busy (yes >/dev/null)"
    yes >/dev/null &
    hog=$!
    trap 'kill $hog 2>/dev/null || true' EXIT
    while read -r pkg re _; do
      [[ -z "$pkg" ]] && continue
      grep -Eq -- "$filter" <<<"$pkg $re" || continue
      run 2 "$pkg" "$re" "$hog_count" -race
    done <<<"$tests"
    kill $hog 2>/dev/null || true
    trap - EXIT
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done

if [[ $failed -ne 0 ]]; then
  echo "FLAKY: some tests flipped; logs in $logs" >&2
  exit 1
fi
echo "flaky.sh: nothing flipped (logs in $logs)"
